"""The archive on a filesystem (a local directory or an object store through fsspec): layout and commits.

Layout (Hive-partitioned Parquet, one table per topic)::

    <root>/topic=<topic>/date=<YYYY-MM-DD>/part-<epoch>-<seq>.parquet     written by the archiver
    <root>/topic=<topic>/date=<YYYY-MM-DD>/compacted-<seq>.parquet        merged by compaction
    <root>/_state/<archiver>.json                                         offsets and the commit in flight

Exactly-once: a commit writes every data file under a hidden temporary name (``.<name>.tmp``, which no reader
globs), then replaces the state file in one atomic step with the new offsets *and* the list of renames still to
do, then renames. Recovery (every start) finishes the renames of the last commit and deletes any other
temporary file, i.e. a commit whose state was never written: its records were not counted as consumed and are
read again. A record is therefore in the archive once whether the archiver dies before, during or after a
commit. Compaction uses the same step, with the files it replaces to delete.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from services.archive.schema import topic_schema

log = logging.getLogger(__name__)

_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_TOPIC_DIR = re.compile(r"^topic=(.+)$")
#: how many broker epochs' offsets the state keeps (older ones can no longer be resumed anyway)
KEPT_EPOCHS = 10


@dataclass
class Commit:
    """One commit in preparation: files written under temporary names, to be published together."""

    renames: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0


class ArchiveStore:
    """The archive under ``root`` (a path or URL; ``storage_options`` go to fsspec, e.g. an S3 endpoint)."""

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        *,
        row_group_rows: int = 128 * 1024,
        compression_level: int = 3,
    ):
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.row_group_rows = row_group_rows
        self.compression_level = compression_level
        self.url = root

    # Paths -----------------------------------------------------------------------------------------------
    def topic_dir(self, topic: str) -> str:
        return f"{self.root}/topic={topic}"

    def date_dir(self, topic: str, day: date) -> str:
        return f"{self.topic_dir(topic)}/date={day.isoformat()}"

    def state_path(self, name: str) -> str:
        return f"{self.root}/_state/{name}.json"

    def topics(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        out = []
        for p in self.fs.ls(self.root, detail=False):
            m = _TOPIC_DIR.match(posixpath.basename(p.rstrip("/")))
            if m:
                out.append(m.group(1))
        return sorted(out)

    def dates(self, topic: str) -> list[date]:
        d = self.topic_dir(topic)
        if not self.fs.exists(d):
            return []
        out = []
        for p in self.fs.ls(d, detail=False):
            m = _DATE_DIR.match(posixpath.basename(p.rstrip("/")))
            if m:
                out.append(date.fromisoformat(m.group(1)))
        return sorted(out)

    def data_files(self, topic: str, day: date | None = None) -> list[str]:
        """Published Parquet files of ``topic`` (of one date), never temporary ones."""
        base = self.date_dir(topic, day) if day else self.topic_dir(topic)
        if not self.fs.exists(base):
            return []
        pattern = f"{base}/*.parquet" if day else f"{base}/date=*/*.parquet"
        return sorted(p for p in self.fs.glob(pattern) if not posixpath.basename(p).startswith("."))

    # State -----------------------------------------------------------------------------------------------
    def load_state(self, name: str) -> dict[str, Any]:
        path = self.state_path(name)
        if not self.fs.exists(path):
            return {"seq": 0, "offsets": {}, "epochs": [], "renames": [], "deletes": []}
        return orjson.loads(self.fs.cat_file(path))

    def _write_atomically(self, path: str, data: bytes) -> None:
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        self._write_bytes(tmp, data)
        self.fs.mv(tmp, path)  # a rename on a local disk; one PUT on an object store (copy, then delete)
        if self.local:
            _fsync_dir(posixpath.dirname(path))

    def _write_bytes(self, path: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self.local:
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename that publishes it must not outlive its content
        else:
            self.fs.pipe_file(path, data)

    def recover(self, name: str) -> dict[str, Any]:
        """Finish the last commit (renames, deletes) and remove temporary files of commits never recorded."""
        state = self.load_state(name)
        pending = {src for src, _ in state.get("renames", [])}
        for src, dst in state.get("renames", []):
            if self.fs.exists(src):
                self.fs.mv(src, dst)
        for path in state.get("deletes", []):
            if self.fs.exists(path):
                self.fs.rm(path)
        if self.fs.exists(self.root):
            # (fsspec's glob skips hidden names: list the files)
            for path in self.fs.find(self.root):
                base = posixpath.basename(path)
                if base.startswith(".") and base.endswith(".tmp") and path not in pending:
                    self.fs.rm(path)
        if state.get("renames") or state.get("deletes"):
            state["renames"], state["deletes"] = [], []
            self._write_atomically(self.state_path(name), orjson.dumps(state))
        return state

    # Writing ---------------------------------------------------------------------------------------------
    def stage(self, commit: Commit, topic: str, day: date, name: str, table: pa.Table) -> str:
        """Write ``table`` under a temporary name in its partition; it is published by :meth:`publish`."""
        final = f"{self.date_dir(topic, day)}/{name}.parquet"
        tmp = f"{self.date_dir(topic, day)}/.{name}.parquet.tmp"
        data = self.encode(table)
        self._write_bytes(tmp, data)
        commit.renames.append((tmp, final))
        commit.rows += table.num_rows
        commit.bytes += len(data)
        return final

    def encode(self, table: pa.Table) -> bytes:
        # Sorted by entity then time: runs of one meter/intersection compress well, and row-group statistics
        # on kafka_key let a reader skip what an entity query does not need.
        table = table.sort_by([("kafka_key", "ascending"), ("ce_time", "ascending")])
        buf = io.BytesIO()
        pq.write_table(
            table,
            buf,
            compression="zstd",
            compression_level=self.compression_level,
            row_group_size=self.row_group_rows,
            write_statistics=True,
        )
        return buf.getvalue()

    def publish(self, name: str, state: dict[str, Any], commit: Commit) -> None:
        """Record ``state`` (the new offsets) with the commit's renames and deletes atomically, then do them."""
        state = dict(state)
        state["renames"] = commit.renames
        state["deletes"] = commit.deletes
        self._write_atomically(self.state_path(name), orjson.dumps(state))
        for src, dst in commit.renames:
            self.fs.mv(src, dst)
        for path in commit.deletes:
            self.fs.rm(path)
        if self.local:
            for d in {posixpath.dirname(dst) for _, dst in commit.renames}:
                _fsync_dir(d)

    # Compaction and retention ------------------------------------------------------------------------------
    def compaction_candidates(self, topic: str, day: date, *, small_bytes: int, min_files: int) -> list[str]:
        files = self.data_files(topic, day)
        small = [p for p in files if self.fs.size(p) < small_bytes]
        return small if len(small) >= min_files else []

    def compact(self, name: str, state: dict[str, Any], topic: str, day: date, files: list[str]) -> Commit:
        """Merge ``files`` (of one topic and date) into one file in the topic's current schema (older files
        gain the columns of newer contract versions, empty) and publish it in place of them."""
        dataset = ds.dataset(files, format="parquet", filesystem=self.fs, schema=topic_schema(topic))
        table = dataset.to_table()
        commit = Commit(deletes=list(files))
        seq = int(state.get("seq", 0)) + 1
        state["seq"] = seq
        self.stage(commit, topic, day, f"compacted-{seq:010d}-{uuid.uuid4().hex[:8]}", table)
        self.publish(name, state, commit)
        return commit

    def expire(self, topic: str, keep_days: int, today: date) -> list[date]:
        """Delete the dates of ``topic`` older than ``keep_days`` before ``today``; returns them."""
        gone = [d for d in self.dates(topic) if d < today - timedelta(days=keep_days)]
        for d in gone:
            self.fs.rm(self.date_dir(topic, d), recursive=True)
        return gone


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
