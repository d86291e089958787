"""Run the `atspm` reference implementation on a hi-res log and a detector configuration (CSV files) and write
each measure table as CSV. Runs in atspm's own venv (see atspm_reference.py): it imports nothing of IOC.

usage: python atspm_run.py RAW.csv CONFIG.csv OUT_DIR [ped_volumes]

With ``ped_volumes`` it runs ``full_ped`` with ``return_volumes`` only (atspm's pedestrian volume estimates).
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


PED_VOLUMES = [
    {"name": "full_ped", "params": {"seconds_between_actuations": 15, "return_volumes": True}},
]


def main(raw: str, config: str, out: str, mode: str = "") -> None:
    aggregations = PED_VOLUMES if mode == "ped_volumes" else AGGREGATIONS
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with SignalDataProcessor(
        raw_data=raw, detector_config=config, bin_size=15, verbose=0, aggregations=aggregations
    ) as p:
        p.load()
        p.aggregate()
        for agg in aggregations:
            name = agg["name"]
            p.conn.query(f"SELECT * FROM {name}").df().to_csv(out_dir / f"{name}.csv", index=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])
