"""Garbage-collector settings for IOC's batch-processing processes (stream workers and ingest services).

A batch of fetched records or posted readings allocates ~10 short-lived container objects per item (header
tuples and lists, dicts, records) that stay alive until the batch is done. CPython's generational collector
runs a gen-0 collection every ``threshold0`` allocations of such objects and walks every young object still
alive, so a small threshold walks each batch's objects once or twice more (promoting them to gen 1 on the way)
before they are freed by reference counting anyway. Collecting less often, and moving what start-up loaded
out of the collector's way, removes most of that work. Cyclic garbage is rare here (reference counting frees
the batches); peak memory was unchanged in the benchmarks.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "OLDER_GENERATION_THRESHOLDS", "tune_gc"]

#: Gen-0 threshold of tuned processes (CPython's default: 700, which cost the meter ingest ~1.5x the CPU per
#: reading). Interleaved ``make bench`` runs (docs/stream-design.md, step 12): 50,000 cost the stream base, the
#: meter processors and the meter ingest 13–25% more CPU per event than 1,000,000, at the same peak memory.
GEN0_THRESHOLD = 1_000_000

#: A gen-1 collection every 10 gen-0 ones and a full one every 10 gen-1 ones: a full collection every ~100 million
#: allocations, as with the earlier (50,000, 20, 100), so a worker that runs for months still frees cyclic garbage
#: that reached the oldest generation (with (1,000,000, 20, 100) that would take two billion allocations).
OLDER_GENERATION_THRESHOLDS = (10, 10)


def tune_gc(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect once, freeze what survives (start-up's modules, caches, registries) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, *OLDER_GENERATION_THRESHOLDS)
