-- City schema: KPI time series (raw windows + minute/hour/day roll-ups), current values, alarms, incidents,
-- and the numbered stream the console's Server-Sent Events resume from.

-- One row per KPI, area and window: the latest merged value of that window.
CREATE TABLE kpi_values (
    kpi            text        NOT NULL,
    scope_level    text        NOT NULL,
    scope_code     text        NOT NULL,
    window_seconds int         NOT NULL,
    window_start   timestamptz NOT NULL,
    value          double precision,
    status         text        NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (kpi, scope_level, scope_code, window_seconds, window_start)
);
CREATE INDEX kpi_values_window_start ON kpi_values (window_start);

-- The newest window of every series, with what the tiles need.
CREATE TABLE kpi_current (
    kpi            text        NOT NULL,
    domain         text        NOT NULL,
    scope_level    text        NOT NULL,
    scope_code     text        NOT NULL,
    window_seconds int         NOT NULL,
    window_start   timestamptz NOT NULL,
    value          double precision,
    numerator      double precision NOT NULL,
    denominator    double precision,
    unit           text        NOT NULL,
    status         text        NOT NULL,
    target         double precision,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (kpi, scope_level, scope_code, window_seconds)
);
CREATE INDEX kpi_current_scope ON kpi_current (scope_level, scope_code);

-- Roll-ups: sum/count give exact averages when rolled up again (minute → hour → day).
CREATE TABLE kpi_minute (
    kpi text NOT NULL, scope_level text NOT NULL, scope_code text NOT NULL, window_seconds int NOT NULL,
    bucket timestamptz NOT NULL,
    sum double precision NOT NULL, count int NOT NULL, min double precision NOT NULL,
    max double precision NOT NULL, last double precision NOT NULL,
    PRIMARY KEY (kpi, scope_level, scope_code, window_seconds, bucket)
);
CREATE INDEX kpi_minute_bucket ON kpi_minute (bucket);
CREATE TABLE kpi_hour (LIKE kpi_minute INCLUDING ALL);
CREATE TABLE kpi_day (LIKE kpi_minute INCLUDING ALL);

CREATE TABLE incidents (
    incident_id   text PRIMARY KEY,
    district      text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('open', 'closed')),
    opened_at     timestamptz NOT NULL,
    last_alarm_at timestamptz NOT NULL,
    closed_at     timestamptz,
    domains       text[]      NOT NULL DEFAULT '{}',
    alarm_count   int         NOT NULL DEFAULT 0
);
CREATE INDEX incidents_open ON incidents (district) WHERE state = 'open';

CREATE TABLE alarms (
    alarm_id        text PRIMARY KEY,
    domain          text        NOT NULL,
    alarm_type      text        NOT NULL,
    severity        text        NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    source_id       text        NOT NULL,
    district        text,
    commune         text,
    message         text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('active', 'acknowledged', 'cleared')),
    raised_at       timestamptz NOT NULL,
    changed_at      timestamptz NOT NULL,
    acknowledged_by text,
    acknowledged_at timestamptz,
    cleared_by      text,
    cleared_at      timestamptz,
    incident_id     text REFERENCES incidents(incident_id),
    occurrences     int         NOT NULL DEFAULT 1
);
CREATE INDEX alarms_open ON alarms (district, severity) WHERE state <> 'cleared';
CREATE INDEX alarms_incident ON alarms (incident_id);

-- Every KPI update and alarm change the console streams, numbered: a reconnecting client sends the last
-- number it saw (Last-Event-ID) and gets everything after it, even after a server restart.
CREATE TABLE stream_items (
    seq     bigserial PRIMARY KEY,
    kind    text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    payload jsonb       NOT NULL
);
CREATE INDEX stream_items_at ON stream_items (at);
