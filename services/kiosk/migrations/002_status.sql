-- Per-kiosk status (GET /v1/kiosks/{id}/status): what ingest accepted (and the broker acknowledged) of the last
-- days, so the service can say a kiosk's peripherals' states, its sessions and its availability without the KPI
-- processor's partition state. Kept 8 days (a weekly schedule plus a holiday week, like the processor's look-back).
CREATE TABLE kiosk_heartbeats (
    kiosk_id text NOT NULL,
    at       timestamptz NOT NULL,
    PRIMARY KEY (kiosk_id, at)
);

-- every accepted peripheral status change; ``paper`` '' when the change carried none (not a printer, or unsaid)
CREATE TABLE kiosk_peripheral_changes (
    seq        bigserial,
    kiosk_id   text NOT NULL,
    peripheral text NOT NULL,
    at         timestamptz NOT NULL,
    state      text NOT NULL,
    paper      text NOT NULL DEFAULT '',
    PRIMARY KEY (kiosk_id, peripheral, at, state, paper)
);

-- finished sessions: no dossier code, failure reason or rating (the status needs none of them)
CREATE TABLE kiosk_sessions (
    kiosk_id   text NOT NULL,
    session_id text NOT NULL,
    journey    text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    outcome    text NOT NULL,
    PRIMARY KEY (kiosk_id, session_id)
);
CREATE INDEX kiosk_sessions_started ON kiosk_sessions (kiosk_id, started_at);
