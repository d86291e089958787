-- Sign-in to the console: operators' password hashes and server-side sessions (docs/console.md, "Sign-in and
-- roles"). An operator is a principal (kind operator, attributes.role) like any API-key holder, so every route's
-- scope and role checks apply to both. Only a hash of each session id is stored: a database leak gives no
-- usable session.
CREATE TABLE IF NOT EXISTS operator_credentials (
    principal_id  text PRIMARY KEY REFERENCES principals (id),
    username      text NOT NULL UNIQUE,
    password_hash text,                 -- scrypt$n$r$p$salt$hash; NULL: signs in through OIDC only
    oidc_subject  text UNIQUE,          -- issuer|sub of an OIDC-provisioned operator
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sessions (
    id_hash         bytea PRIMARY KEY,
    principal_id    text NOT NULL REFERENCES principals (id),
    csrf_token      text NOT NULL,
    method          text NOT NULL,      -- password, oidc
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    idle_seconds    integer NOT NULL,
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,  -- absolute: never moved by activity
    ended_at        timestamptz
);
CREATE INDEX IF NOT EXISTS sessions_principal ON sessions (principal_id) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);

-- OIDC sign-ins in progress (authorization code flow with PKCE): what the callback checks, for a few minutes.
-- `state` finds the row, the browser's binding cookie must match, the PKCE verifier and nonce stay here.
CREATE TABLE IF NOT EXISTS oidc_logins (
    state_hash    bytea PRIMARY KEY,
    binding_hash  bytea NOT NULL,
    code_verifier text NOT NULL,
    nonce         text NOT NULL,
    redirect_uri  text NOT NULL,
    expires_at    timestamptz NOT NULL
);
