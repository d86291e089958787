from bench.dossier_processor_cpu import PARTITIONS, fetched_batches, run_once


def test_the_cpu_benchmark_folds_its_whole_workload_on_every_partition():
    batches = fetched_batches(300)
    assert len(batches) == PARTITIONS and all(batches.values())
    assert sum(len(records) for records in batches.values()) == 300
    for records in batches.values():  # offsets as a fetch gives them, each dossier's events in order
        assert [r.offset for r in records] == list(range(len(records)))
    spent = run_once(batches, batch=40, emit_every=3)  # raises if any record fails to decode
    assert set(spent) == {"decode + validate", "apply", "emit", "changelog changes"}
    assert all(seconds >= 0 for seconds in spent.values()) and spent["decode + validate"] > 0
