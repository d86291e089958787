-- Entity ownership: the principal (gateway / signal-control system) that may report hi-res events for the
-- intersection's controller. NULL: only a traffic:admin principal may report for it.
ALTER TABLE intersections ADD COLUMN IF NOT EXISTS gateway_principal text;
