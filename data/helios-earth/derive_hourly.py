"""Derive the hourly demand files of this folder and of ../philly/ from the upstream per-minute files.

The product reads only the derived files; this script documents how they were made and can be
run again where the upstream files are available:

    python data/helios-earth/derive_hourly.py UPSTREAM_HELIOS_DIR UPSTREAM_PHILLY_DIR
"""

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
HELIOS_VCS = {"vc6YE": 208, "vcvlY": 96, "vcpDC": 56}


def helios(upstream: Path) -> None:
    """Write one hourly file per copied virtual cluster: mean running, pending and demand GPUs."""
    for vc in HELIOS_VCS:
        minutes = pd.read_csv(upstream / f"{vc}_cluster_sequence_vc.csv", parse_dates=["time"]).set_index("time")
        hourly = pd.DataFrame({
            "minutes": minutes["running_gpu_num"].resample("h").count(),
            "capacity_gpus": minutes["total_gpu_num"].resample("h").max(),
            "running_gpus_mean": minutes["running_gpu_num"].resample("h").mean().round(2),
            "pending_gpus_mean": minutes["pending_gpu_num"].resample("h").mean().round(2),
            "demand_gpus_mean": (minutes["running_gpu_num"] + minutes["pending_gpu_num"]).resample("h").mean().round(2),
        })
        hourly.index.name = "hour_start"
        hourly.to_csv(HERE / f"{vc}_hourly.csv")


def philly(upstream: Path) -> None:
    """Write the hourly mean and maximum of busy servers, and how many minutes each hour has."""
    minutes = pd.read_csv(upstream / "philly_node_sequence.csv", parse_dates=["time"]).set_index("time")
    hourly = pd.DataFrame({
        "minutes": minutes["active"].resample("h").count(),
        "servers_total": minutes["total"].resample("h").max(),
        "active_servers_mean": minutes["active"].resample("h").mean().round(2),
        "active_servers_max": minutes["active"].resample("h").max(),
    })
    hourly.index.name = "hour_start"
    hourly.to_csv(HERE.parent / "philly" / "philly_active_servers_hourly.csv")


if __name__ == "__main__":
    helios(Path(sys.argv[1]))
    philly(Path(sys.argv[2]))
