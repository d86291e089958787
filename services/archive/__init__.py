"""The event archive: every event of the catalogue's topics as Hive-partitioned Parquet (see docs/archive.md)."""
