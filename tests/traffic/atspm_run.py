"""Run the `atspm` reference implementation on a hi-res log and a detector configuration (CSV files) and write
each measure table as CSV. Runs in atspm's own venv (see atspm_reference.py): it imports nothing of IOC.

usage: python atspm_run.py RAW.csv CONFIG.csv OUT_DIR
"""

import sys
from pathlib import Path

from atspm import SignalDataProcessor

AGGREGATIONS = [
    {"name": "actuations", "params": {}},
    {"name": "arrival_on_green", "params": {"latency_offset_seconds": 0}},
    {
        "name": "split_failures",
        "params": {
            "red_time": 5,
            "red_occupancy_threshold": 0.80,
            "green_occupancy_threshold": 0.80,
            "by_approach": True,
        },
    },
    {"name": "yellow_red", "params": {"latency_offset_seconds": 0}},
    {"name": "terminations", "params": {}},
    {"name": "full_ped", "params": {"seconds_between_actuations": 15, "return_volumes": False}},
]


def main(raw: str, config: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with SignalDataProcessor(
        raw_data=raw, detector_config=config, bin_size=15, verbose=0, aggregations=AGGREGATIONS
    ) as p:
        p.load()
        p.aggregate()
        for agg in AGGREGATIONS:
            name = agg["name"]
            p.conn.query(f"SELECT * FROM {name}").df().to_csv(out_dir / f"{name}.csv", index=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
