"""Where a KPI processor's CPU goes, per event: the profile ``make bench`` prints beside the processor/librdkafka
ratio (issue #42 asks for the profile that explains a missed target).

The core's stages are timed with the main thread's CPU clock around each call; they are called once per
topic-partition and batch, not per event, so the clock reads cost next to nothing. What is left of the main
thread's CPU is the driver and the consumer client on the event loop; the other threads' CPU (aiokafka's fetcher
under Faust, librdkafka's threads, the producer) is the process's CPU minus the main thread's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

#: the core's stages, in the order a batch meets them (``shared.stream.core.ProcessorCore._process``)
STAGES = ("provenance", "decode", "dedup", "apply", "emit")
#: what each field of the profile is, for the report
LABELS = {
    "provenance": "provenance check (producer signatures)",
    "decode": "CloudEvents envelope + payload decoding and validation",
    "dedup": "de-duplication window",
    "apply": "the fold (apply_batch)",
    "emit": "emit (KPI outputs, window closing)",
    "core_other": "durable write of outputs and changelog, bookkeeping",
    "driver_main_thread": "driver and consumer client on the event loop",
    "other_threads": "other threads (consumer fetcher, librdkafka, producer)",
}


class StageProfile:
    """Accumulates the main thread's CPU seconds per stage between :meth:`first` and :meth:`last`."""

    def __init__(self) -> None:
        self.cpu = dict.fromkeys((*STAGES, "batch"), 0.0)
        self.main0 = self.main1 = self.proc0 = self.proc1 = 0.0

    def timed(self, stage: str, fn: Callable) -> Callable:
        cpu, clock = self.cpu, time.thread_time

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[stage] += clock() - t

        return call

    def timed_async(self, stage: str, fn: Callable) -> Callable:
        """An awaited call: its CPU includes whatever else the loop ran while it waited (the batch's own
        durable write mostly, since the core holds its lock)."""
        cpu, clock = self.cpu, time.thread_time

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                cpu[stage] += clock() - t

        return call

    def attach(self, core: Any) -> None:
        """Time ``core``'s stages. Patches the core module's ``decode_batch`` and the partition class's
        ``unseen``: call it in a bench worker process only (one core per process)."""
        from shared.stream import core as core_module

        core_module.decode_batch = self.timed("decode", core_module.decode_batch)
        partition_class = core_module.PartitionRuntime
        partition_class.unseen = self.timed("dedup", partition_class.unseen)  # type: ignore[method-assign]
        core.provenance.verify = self.timed("provenance", core.provenance.verify)
        core.processor.apply_batch = self.timed("apply", core.processor.apply_batch)
        core._emit = self.timed("emit", core._emit)

    def first(self) -> None:
        self.main0, self.proc0 = time.thread_time(), time.process_time()
        for k in self.cpu:
            self.cpu[k] = 0.0

    def last(self) -> None:
        self.main1, self.proc1 = time.thread_time(), time.process_time()

    def result(self, events: int) -> dict[str, float]:
        """µs of CPU per event by part; the parts add up to the process's CPU per event."""
        if not events:
            return {}
        main = self.main1 - self.main0
        stages = sum(self.cpu[s] for s in STAGES)
        parts = {s: self.cpu[s] for s in STAGES}
        parts["core_other"] = max(0.0, self.cpu["batch"] - stages)
        parts["driver_main_thread"] = max(0.0, main - self.cpu["batch"])
        parts["other_threads"] = max(0.0, (self.proc1 - self.proc0) - main)
        return {k: round(v / events * 1e6, 2) for k, v in parts.items()}
