-- Decision 766 facts per dossier (no personal data: a rating and whether a complaint was made), and the
-- indicators that come from other systems, given per scope and period through the API.
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS digitised boolean NOT NULL DEFAULT false;
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS result_esigned boolean NOT NULL DEFAULT false;
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS rating text CHECK (rating IN ('very_satisfied', 'satisfied', 'unsatisfied'));
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS complained boolean NOT NULL DEFAULT false;
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS portal_syncs int NOT NULL DEFAULT 0;
ALTER TABLE dossiers ADD COLUMN IF NOT EXISTS portal_late_syncs int NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS index766_inputs (
    scope_level  text NOT NULL,
    scope_code   text NOT NULL,
    period       text NOT NULL,
    indicator    text NOT NULL,
    numerator    double precision NOT NULL CHECK (numerator >= 0),
    denominator  double precision NOT NULL CHECK (denominator > 0 AND numerator <= denominator),
    source       text NOT NULL,
    principal    text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope_level, scope_code, period, indicator)
);
