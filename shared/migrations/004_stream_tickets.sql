-- Single-use, short-lived tickets for Server-Sent Events requests (a browser's EventSource cannot send an
-- Authorization header, and a key must never travel in a URL). Only a hash of each ticket is stored.
CREATE TABLE IF NOT EXISTS stream_tickets (
    ticket_hash  bytea PRIMARY KEY,
    principal_id text NOT NULL REFERENCES principals (id),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS stream_tickets_expires_at ON stream_tickets (expires_at);
