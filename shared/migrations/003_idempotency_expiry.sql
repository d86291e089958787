-- Idempotency rows expire (shared.http.IDEMPOTENCY_TTL_SECONDS) and are purged in batches by age.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
