-- Kiosk schema: the fleet registry. Telemetry and sessions are events only (they live on the broker).
CREATE TABLE kiosks (
    kiosk_id          text PRIMARY KEY,
    building          text NOT NULL,
    address           text NOT NULL,
    district          text NOT NULL,
    commune           text,
    opening_hours     jsonb NOT NULL,
    peripherals       text[] NOT NULL,
    software_version  text NOT NULL,
    gateway_principal text,            -- the gateway principal that may report for this kiosk
    in_service_since  timestamptz NOT NULL,
    active            boolean NOT NULL DEFAULT true,
    version           bigint NOT NULL DEFAULT 1,
    published_version bigint NOT NULL DEFAULT 0,   -- last version acknowledged on ioc.kiosk.registry
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The republisher looks for registry changes not yet on the topic.
CREATE INDEX kiosks_unpublished ON kiosks (kiosk_id) WHERE published_version < version;
CREATE INDEX kiosks_district ON kiosks (district);
