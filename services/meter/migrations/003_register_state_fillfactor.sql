-- Every accepted reading rewrites its register's row (flushed once a second). With room left in each page the
-- update is a HOT update (no indexed column changes): no new primary-key entry per row version, ~40% less
-- PostgreSQL CPU per register written (python -m bench.meter_register_store: 11.8-12.4 µs at fillfactor 100,
-- 7.0-7.4 at 70; HOT updates 1% -> 96%).
-- Applies to pages written from now on; VACUUM FULL register_state rewrites existing ones.
ALTER TABLE register_state SET (fillfactor = 70);
