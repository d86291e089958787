-- The registry is read in pages in change order (updated_at, meter_id): the replicas' refresh and the start-up load.
CREATE INDEX IF NOT EXISTS meters_change_order ON meters (updated_at, meter_id);
DROP INDEX IF EXISTS meters_updated_at;
