import gc

from shared.gc_tuning import GEN0_THRESHOLD, OLDER_GENERATION_THRESHOLDS, tune_gc


def test_tuning_freezes_what_is_loaded_and_collects_young_objects_less_often():
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # alive at tuning time: moved out of the collector's generations
    try:
        gc.set_threshold(700)
        tune_gc()
        assert gc.get_threshold() == (GEN0_THRESHOLD, *OLDER_GENERATION_THRESHOLDS)
        # full collections as often as before the tuning (50,000 × 20 × 100 allocations), not 20 times rarer
        assert (
            GEN0_THRESHOLD * OLDER_GENERATION_THRESHOLDS[0] * OLDER_GENERATION_THRESHOLDS[1]
            <= 50_000 * 20 * 100
        )
        assert gc.get_freeze_count() >= len(kept)
        tune_gc(5_000)
        assert gc.get_threshold()[0] == 5_000
    finally:
        gc.set_threshold(*before)
