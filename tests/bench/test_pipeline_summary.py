"""How the whole-pipeline benchmark judges a process's memory: flat over a minute, levelled off over a soak."""

from __future__ import annotations

from bench.domain_pipeline import Child, _process_summary


def summary(rss: list[float]) -> dict:
    child = Child("processor-x", None, None)
    child.samples = [(float(t), mib, t * 0.1) for t, mib in enumerate(rss)]  # one sample a second
    return _process_summary(child, 0.0, float(len(rss) - 1))


def test_memory_that_levels_off_is_a_plateau_even_when_it_grew_early_in_the_run():
    # Grows until 60% of the run (windows filling up to their retention horizon), then stays.
    s = summary([100 + min(t, 60) for t in range(101)])
    assert not s["memory_flat"]  # end 160 > 1.2 × the 25% mark (125)
    assert s["memory_plateau"]
    assert s["rss_series_mib"] == [
        100.0,
        110.0,
        120.0,
        130.0,
        140.0,
        150.0,
        160.0,
        160.0,
        160.0,
        160.0,
        160.0,
    ]
    assert (s["rss_at_25pct_mib"], s["rss_at_75pct_mib"]) == (125.0, 160.0)


def test_a_steady_leak_is_no_plateau_though_a_minute_long_judgement_calls_it_flat():
    s = summary([100 + 0.25 * t for t in range(101)])  # +0.25 MiB a second to the end
    assert s["memory_flat"]  # 125 ≤ 1.2 × 106.25
    assert not s["memory_plateau"]  # the last quarter added 6.25 MiB, 5% of 118.75


def test_allocator_noise_in_the_last_quarter_still_counts_as_levelled_off():
    s = summary([100.0] * 76 + [102.5] * 25)
    assert s["memory_plateau"]
    assert not summary([100.0] * 76 + [103.5] * 25)["memory_plateau"]
