"""The pure parts of re-keying (shared/kafka/rekey.py); the procedure itself runs on Apache Kafka in
tests/kafka/test_rekeying.py."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
from typer.testing import CliRunner

from ioc.cli import app
from shared.kafka.producer import partition_for
from shared.kafka.rekey import _latest_boundaries, misplaced


def test_a_record_is_misplaced_only_below_its_boundary_and_where_its_key_no_longer_hashes():
    key = next(
        k for k in (f"k{i}".encode() for i in range(100)) if partition_for(k, 2) != partition_for(k, 4)
    )
    old, new = partition_for(key, 2), partition_for(key, 4)
    boundary = (10, 4)  # offsets below 10 were written with 2 partitions; 4 now
    assert misplaced(key, old, 9, boundary)  # its copy in ``new`` is folded instead
    assert not misplaced(key, new, 9, boundary)
    assert not misplaced(key, old, 10, boundary)  # after the boundary: whatever a producer chose
    assert not misplaced(None, old, 0, boundary)  # no key, nothing to hash
    assert not misplaced(key, old, 0, None)  # never re-keyed


def test_the_last_boundaries_written_per_topic_count():
    def rec(topic: str, partitions: int, ends: dict[int, int]):
        value = {"partitions": partitions, "boundaries": {str(p): o for p, o in ends.items()}}
        return SimpleNamespace(key=topic.encode(), value=orjson.dumps(value))

    got = _latest_boundaries(
        [rec("a", 2, {0: 5, 1: 7}), rec("b", 3, {0: 1}), rec("a", 4, {0: 9, 1: 9, 2: 0, 3: 0})]
    )
    assert got == {("a", 0): (9, 4), ("a", 1): (9, 4), ("a", 2): (0, 4), ("a", 3): (0, 4), ("b", 0): (1, 3)}


def test_rekey_names_the_processors_it_knows():
    result = CliRunner().invoke(app, ["rekey", "no-such-processor"])
    assert result.exit_code == 2
    assert "meter-kpi" in result.output or "meter-kpi" in str(result.stderr_bytes or b"")
