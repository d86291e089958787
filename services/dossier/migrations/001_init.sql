-- Dossier service schema: reference data, dossiers (with the applicant's personal data, which never leaves
-- this schema), their history, and the transactional outbox of events to publish.
CREATE TABLE procedures (
    code            text PRIMARY KEY,
    name            text NOT NULL,
    online_level    text NOT NULL CHECK (online_level IN ('fully_online', 'partly_online', 'offline')),
    service_level   int,
    processing_days int NOT NULL CHECK (processing_days >= 0),
    has_fees        boolean NOT NULL,
    pauses_clock    boolean NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agencies (
    code        text PRIMARY KEY,
    name        text NOT NULL,
    level       text NOT NULL,
    admin_unit  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dossiers (
    code              text PRIMARY KEY,
    procedure_code    text NOT NULL REFERENCES procedures(code),
    agency_code       text NOT NULL REFERENCES agencies(code),
    admin_unit        text NOT NULL,
    district          text,
    channel           text NOT NULL,
    status            int NOT NULL CHECK (status BETWEEN 1 AND 10),
    step              int NOT NULL DEFAULT 1,
    submitted_at      timestamptz NOT NULL,
    last_change_at    timestamptz NOT NULL,
    received_at       timestamptz,
    due_date          date,
    paused_at         timestamptz,
    promised_date     date,
    resolved_at       timestamptz,
    closed_at         timestamptz,
    fees_paid_online  boolean,
    -- personal data: stored for the agency, never published or logged
    applicant_name    text NOT NULL,
    applicant_id_number text NOT NULL,
    applicant_address text NOT NULL,
    applicant_phone   text NOT NULL,
    -- deadline watcher: the due date already warned about / reported overdue (a new due date re-arms them)
    warned_due_date   date,
    overdue_due_date  date,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dossiers_agency_status ON dossiers (agency_code, status);
CREATE INDEX dossiers_open_due ON dossiers (due_date) WHERE status IN (2, 4, 5, 6);

CREATE TABLE dossier_history (
    id            bigserial PRIMARY KEY,
    dossier_code  text NOT NULL REFERENCES dossiers(code),
    at            timestamptz NOT NULL,
    action        text NOT NULL,
    from_status   int,
    to_status     int NOT NULL,
    principal     text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX dossier_history_code ON dossier_history (dossier_code, id);

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         bytea NOT NULL,
    value       bytea NOT NULL,
    headers     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
