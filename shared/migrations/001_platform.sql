-- Platform schema: principals, API keys (hashed), idempotency keys, the append-only audit trail.
CREATE TABLE principals (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('admin', 'agency', 'gateway', 'operator', 'service')),
    display_name text NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    attributes  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    principal_id text NOT NULL REFERENCES principals(id),
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE idempotency_keys (
    principal_id text NOT NULL,
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    status_code  int,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, scope, key)
);

CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    principal text NOT NULL,
    service   text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);

-- Append-only: the audit trail cannot be changed or deleted, even by the services.
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
