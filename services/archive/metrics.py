"""The archiver's Prometheus metrics (labels: topics only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ARCHIVED = Counter("ioc_archive_events_total", "Events written to the archive", ["topic"])
SKIPPED = Counter(
    "ioc_archive_replayed_skipped_total",
    "Records a replay copied from the archive, not archived again",
    ["topic"],
)
COMMITS = Counter("ioc_archive_commits_total", "Archive commits (files and offsets published together)")
COMMIT_SECONDS = Histogram(
    "ioc_archive_commit_seconds",
    "Time to build, write and publish one commit",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BYTES_WRITTEN = Counter("ioc_archive_bytes_written_total", "Parquet bytes written (commits and compaction)")
LAG = Gauge("ioc_archive_lag_events", "Records on the broker not archived yet", ["topic"])
LAST_COMMIT = Gauge("ioc_archive_last_commit_timestamp_seconds", "When the archiver last published a commit")
