-- Traffic-signal service schema: the intersection registry and the 15-minute signal performance measures.
CREATE TABLE intersections (
    intersection_id text PRIMARY KEY,
    controller_id   text NOT NULL UNIQUE,
    name            text NOT NULL,
    district        text NOT NULL,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    phases          int[] NOT NULL DEFAULT '{}',
    detectors       jsonb NOT NULL DEFAULT '[]',
    revision        int NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE phase_measures (
    intersection_id text NOT NULL,
    phase           int NOT NULL,
    bin_start       timestamptz NOT NULL,
    bin_seconds     int NOT NULL,
    district        text,
    measures        jsonb NOT NULL,
    computed_at     timestamptz NOT NULL,
    PRIMARY KEY (intersection_id, bin_start, phase)
);
