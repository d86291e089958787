-- The meter service's own schema (search_path = meter, public).

-- The registry: what the city needs about each meter (no customer identity).
CREATE TABLE IF NOT EXISTS meters (
    meter_id         text PRIMARY KEY,
    customers        integer NOT NULL CHECK (customers >= 0),
    district         text NOT NULL,
    commune          text NOT NULL,
    feeder           text NOT NULL,
    transformer      text,
    installed_on     date NOT NULL,
    interval_seconds integer NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS meters_updated_at ON meters (updated_at);
CREATE INDEX IF NOT EXISTS meters_feeder ON meters (feeder);

-- Last accepted register per meter and OBIS code (validation state, reloaded at start).
-- seen_mask: bit k set = the interval k steps before last_end was accepted (de-duplication).
CREATE TABLE IF NOT EXISTS register_state (
    meter_id   text NOT NULL,
    obis       text NOT NULL,
    last_end   bigint NOT NULL,
    seen_mask  bigint NOT NULL,
    last_value double precision,
    value_end  bigint NOT NULL,
    PRIMARY KEY (meter_id, obis)
);

-- Meters whose power-down has not been followed by a power-up yet (interruption pairing).
CREATE TABLE IF NOT EXISTS open_outages (
    meter_id text PRIMARY KEY,
    down_ms  bigint NOT NULL
);
