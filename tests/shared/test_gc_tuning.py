import gc

from shared.gc_tuning import GEN0_THRESHOLD, tune_gc


def test_tuning_freezes_what_is_loaded_and_collects_young_objects_less_often():
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # alive at tuning time: moved out of the collector's generations
    try:
        gc.set_threshold(700)
        tune_gc()
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        assert gc.get_freeze_count() >= len(kept)
        tune_gc(5_000)
        assert gc.get_threshold()[0] == 5_000
    finally:
        gc.set_threshold(*before)
