-- Entity ownership: the principal (head-end system) that may report readings and events for a meter.
-- NULL: only a meter:admin principal may report for it.
ALTER TABLE meters ADD COLUMN IF NOT EXISTS gateway_principal text;
