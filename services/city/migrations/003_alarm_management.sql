-- Alarm management (ISA-18.2 / EEMUA 191): chattering latch, shelving, and the log alarm rates are measured on.
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS chattering boolean NOT NULL DEFAULT false;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS source_state text;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelved_until timestamptz;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelved_by text;
ALTER TABLE alarms ADD COLUMN IF NOT EXISTS shelve_reason text;

-- One row per notice a source sent (raised/cleared) and whether it was annunciated to operators.
CREATE TABLE IF NOT EXISTS alarm_log (
    id          bigserial PRIMARY KEY,
    alarm_id    text        NOT NULL,
    domain      text        NOT NULL,
    alarm_type  text        NOT NULL,
    district    text,
    state       text        NOT NULL CHECK (state IN ('raised', 'cleared')),
    at          timestamptz NOT NULL,
    annunciated boolean     NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_log_at ON alarm_log (at);
CREATE INDEX IF NOT EXISTS alarm_log_alarm ON alarm_log (alarm_id, at);
