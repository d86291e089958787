-- Office hours per agency (a dossier received after closing time counts as received on the next working day)
-- and the working calendar the open dossiers' due dates were last computed with (a change reschedules them).
ALTER TABLE agencies ADD COLUMN IF NOT EXISTS office_open time NOT NULL DEFAULT '08:00';
ALTER TABLE agencies ADD COLUMN IF NOT EXISTS office_close time NOT NULL DEFAULT '17:00';

CREATE TABLE IF NOT EXISTS calendar_applied (
    id          int PRIMARY KEY CHECK (id = 1),
    days_off    date[] NOT NULL,
    worked      date[] NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
