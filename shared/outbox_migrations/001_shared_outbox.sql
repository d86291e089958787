-- The transactional outbox (shared/outbox.py), one per service, in the service's own schema: events written in
-- the same transaction as the state change they report, published by the relay, marked sent once acknowledged.
-- IF NOT EXISTS: the dossier service created the same table in its own 001_init.sql before it was shared.
CREATE TABLE IF NOT EXISTS outbox (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         bytea NOT NULL,
    value       bytea NOT NULL,
    headers     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
