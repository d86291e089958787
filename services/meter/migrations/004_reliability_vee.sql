-- Registry dates (N_T from the registry: a meter serves customers from installed_on, or from effective_on for a
-- changed entry, until decommissioned_on), VEE state per register (frozen-register run, recent values for the
-- both-neighbours check) and per-meter power timelines (power events paired by event time).
ALTER TABLE meters ADD COLUMN IF NOT EXISTS decommissioned_on date;
ALTER TABLE meters ADD COLUMN IF NOT EXISTS effective_on date;
ALTER TABLE register_state ADD COLUMN IF NOT EXISTS zero_run integer NOT NULL DEFAULT 0;
-- (end, value) pairs flattened, oldest first
ALTER TABLE register_state ADD COLUMN IF NOT EXISTS recent double precision[] NOT NULL DEFAULT '{}';
-- {"p": [[ms, "d"|"u"], ...] power events not paired yet, "c": [[start ms, end ms], ...] recent interruptions}
CREATE TABLE IF NOT EXISTS power_timelines (
    meter_id text PRIMARY KEY,
    timeline jsonb NOT NULL
);
INSERT INTO power_timelines (meter_id, timeline)
SELECT meter_id, jsonb_build_object('p', jsonb_build_array(jsonb_build_array(down_ms, 'd')), 'c', '[]'::jsonb)
FROM open_outages
ON CONFLICT (meter_id) DO NOTHING;
DELETE FROM open_outages;
