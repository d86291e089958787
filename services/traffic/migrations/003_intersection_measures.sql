-- Per intersection and bin: every detector channel's counts and health, preemption, transit priority and
-- coordination (ioc.traffic.intersection_measures.computed.v1), stored whole as JSON like the phase measures.
CREATE TABLE IF NOT EXISTS intersection_measures (
    intersection_id text NOT NULL,
    bin_start       timestamptz NOT NULL,
    bin_seconds     int NOT NULL,
    district        text,
    measures        jsonb NOT NULL,
    computed_at     timestamptz NOT NULL,
    PRIMARY KEY (intersection_id, bin_start)
);
