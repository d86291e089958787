-- KPI rows are updated in place many times per window (latest value, current value, rollups): room left in
-- each page lets these be HOT updates (no indexed column changes), so PostgreSQL writes no new index entries
-- per row version. Applies to pages written from now on.
ALTER TABLE kpi_values SET (fillfactor = 70);
ALTER TABLE kpi_current SET (fillfactor = 70);
ALTER TABLE kpi_minute SET (fillfactor = 70);
ALTER TABLE kpi_hour SET (fillfactor = 70);
ALTER TABLE kpi_day SET (fillfactor = 70);
