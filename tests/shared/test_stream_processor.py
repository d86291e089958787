"""The processor contract's helpers that need no broker."""

from __future__ import annotations

from datetime import datetime

from shared.stream import State, StreamProcessor


class Echo(StreamProcessor):
    name = "echo"
    topics = ("t",)

    def apply(self, event, state: State) -> None:  # pragma: no cover - not used here
        pass

    def emit(self, state: State, now: datetime):  # pragma: no cover - not used here
        return []


def test_changed_since_emitted_skips_only_unchanged_outputs_per_partition():
    p = Echo()
    assert p.changed_since_emitted(0, "kpi-a", (1.0, 2.0))
    assert not p.changed_since_emitted(0, "kpi-a", (1.0, 2.0))
    assert p.changed_since_emitted(1, "kpi-a", (1.0, 2.0)), "memory is per partition"
    assert p.changed_since_emitted(0, "kpi-a", (1.5, 2.0))
    assert not p.changed_since_emitted(0, "kpi-a", (1.5, 2.0))


def test_forgetting_a_partition_republishes_everything_once():
    p = Echo()
    p.changed_since_emitted(0, "kpi-a", 1)
    p.changed_since_emitted(1, "kpi-a", 1)
    p.forget_emitted([0])
    assert p.changed_since_emitted(0, "kpi-a", 1)
    assert not p.changed_since_emitted(1, "kpi-a", 1)


def test_memory_keeps_what_is_still_emitted_and_forgets_what_is_not(monkeypatch):
    import shared.stream.processor as mod

    monkeypatch.setattr(mod, "EMITTED_GENERATION", 3)
    p = Echo()
    for window in range(100):  # event time moves on: a new window every round, the live one asked every round
        assert p.changed_since_emitted(0, ("energy", window), 1.0)
        assert not p.changed_since_emitted(0, "live", 0.0) or window == 0
    sizes = [len(g) for g in p._emitted[0]]
    assert sum(sizes) <= 6, sizes  # two generations of 3, not 101 idents
    assert not p.changed_since_emitted(0, "live", 0.0), "an ident asked about every round is never forgotten"
    assert p.changed_since_emitted(0, ("energy", 0), 1.0), (
        "a long-pruned window is forgotten: published again"
    )


def test_an_ident_of_the_previous_generation_is_still_known(monkeypatch):
    import shared.stream.processor as mod

    monkeypatch.setattr(mod, "EMITTED_GENERATION", 2)
    p = Echo()
    p.changed_since_emitted(0, "a", 1)
    p.changed_since_emitted(0, "b", 1)
    p.changed_since_emitted(
        0, "c", 1
    )  # the current generation was full: "a" and "b" are now the previous one
    assert not p.changed_since_emitted(0, "a", 1)
    assert p.changed_since_emitted(0, "b", 2), (
        "a changed fingerprint is published whichever generation held it"
    )
    assert not p.changed_since_emitted(0, "b", 2)


def test_the_runtime_forgets_what_was_emitted_when_it_drops_a_partition():
    from shared.config import KafkaSettings
    from shared.stream.core import PartitionRuntime, ProcessorCore

    p = Echo()
    core = ProcessorCore(p, KafkaSettings(), publisher=None, changelog=None)  # drop() does no I/O
    core.partitions[0] = PartitionRuntime(State(0))
    p.changed_since_emitted(0, "kpi-a", 1)
    core.drop([0])
    assert p.changed_since_emitted(0, "kpi-a", 1)


def test_derived_data_is_rebuilt_for_a_reloaded_state_and_after_forgetting():
    p = Echo()
    built: list[int] = []

    def build(state: State) -> list:
        built.append(state.partition)
        return []

    first = State(0)
    view = p.derived(first, build)
    assert p.derived(first, build) is view and built == [0]
    assert p.derived(State(0), build) is not view, "a new state object of the partition: rebuilt"
    p.forget_emitted([0])
    p.derived(State(0), build)
    assert built == [0, 0, 0]
