"""Readers of the hourly demand files shipped in data/helios-earth/ and data/philly/.

Each reader returns a float ``pandas.Series`` on a regular hourly index in UTC, with NaN for the
hours the data's README lists as missing or as an outage. Pure pandas, with no Django import,
so the benchmarks can use it without settings.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
HELIOS_DIR = REPO_ROOT / "data" / "helios-earth"
PHILLY_DIR = REPO_ROOT / "data" / "philly"

HELIOS_OUTAGES = (
    ("2020-05-10 00:00", "2020-05-10 23:00"),
    ("2020-05-12 14:00", "2020-05-12 15:00"),
)
"""First and last hour of each Helios collection outage: every series reads zero there."""

PHILLY_OUTAGES = (("2017-10-26 00:00", "2017-10-26 18:00"),)
"""First and last hour of the Philly logging outage: busy servers read near zero until 18:05."""


def read_hourly(path: Path, column: str) -> pd.DataFrame:
    """Read ``hour_start``, ``minutes`` and ``column`` from ``path``, one row per hour of the clock, in UTC.

    Duplicated hours are averaged, and hours absent from the file are added with ``minutes`` 0.
    Raises ``ValueError`` when a required column is missing.
    """
    frame = pd.read_csv(path)
    missing = {"hour_start", "minutes", column} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} is missing the columns {sorted(missing)}: pass an hourly demand file from data/.")

    hours = pd.to_datetime(frame["hour_start"]).dt.tz_localize("UTC")
    frame = frame.assign(hour_start=hours)[["hour_start", "minutes", column]]
    duplicated = int(frame["hour_start"].duplicated().sum())
    if duplicated:
        logger.info("%s has %d duplicated hours; their values are averaged", path.name, duplicated)
        frame = frame.groupby("hour_start", as_index=False).agg({"minutes": "sum", column: "mean"})

    frame = frame.set_index("hour_start").sort_index()
    full_range = pd.date_range(frame.index[0], frame.index[-1], freq="h", name="hour_start")
    frame = frame.reindex(full_range)
    frame["minutes"] = frame["minutes"].fillna(0)
    return frame


def masked_series(frame: pd.DataFrame, column: str, outages) -> pd.Series:
    """Return ``column`` as floats with NaN at hours without data and inside ``outages`` (inclusive, UTC)."""
    series = frame[column].astype(float)
    series.loc[frame["minutes"] <= 0] = float("nan")
    for first, last in outages:
        series.loc[pd.Timestamp(first, tz="UTC"):pd.Timestamp(last, tz="UTC")] = float("nan")
    return series.rename(column)


def load_helios(path: Path, column: str = "demand_gpus_mean") -> pd.Series:
    """Read one Helios Earth hourly file (``*_hourly.csv``) as GPUs per hour.

    The file's clock is taken as UTC, as its README states. NaN marks hours with no minute of data
    and the documented collection outage: all of 2020-05-10 and 2020-05-12 14:00-15:59, where
    every series reads zero.
    """
    return masked_series(read_hourly(path, column), column, HELIOS_OUTAGES)


def load_philly(path: Path, column: str = "active_servers_mean") -> pd.Series:
    """Read the Philly hourly file as busy servers per hour (servers, not GPUs).

    The file's clock is US Pacific local time. This reader keeps the clock readings and labels
    them as UTC hours, so the index is regular and the daily pattern stays on local hours. At
    the fall-back on 2017-11-05 both 01:00 hours are already merged into one row by the hourly
    grouping, and any duplicated hour would be averaged here. The spring-forward gap does not
    occur in these months, and any absent hour becomes NaN. The timestamps are therefore
    7 or 8 hours off the true UTC instants. NaN also marks hours with no minute of data
    (2017-10-25 15:00-23:59) and the near-zero logging outage of 2017-10-26 00:00-18:59.
    """
    # NOTE: the merged 2017-11-05 01:00 row reads about 126 busy servers against about 330 around
    # it, and the README does not list it as a gap, so it is kept as data.
    return masked_series(read_hourly(path, column), column, PHILLY_OUTAGES)


def load_capacity(path: Path, column: str) -> pd.Series:
    """Read a capacity column (``capacity_gpus`` or ``servers_total``), NaN only where the hour has no data.

    Capacity is not masked at the demand outages, because the files report the full cluster there.
    """
    return masked_series(read_hourly(path, column), column, outages=())


@dataclass(frozen=True)
class DemandDataset:
    """One shipped hourly demand series: where it is, its unit, and how to read it."""

    key: str
    label: str
    path: Path
    unit: str
    loader: Callable[[Path], pd.Series]
    capacity_column: str

    def load(self) -> pd.Series:
        """Return the demand series, NaN at missing and outage hours."""
        return self.loader(self.path)

    def load_capacity(self) -> pd.Series:
        """Return the cluster size per hour in ``unit``."""
        return load_capacity(self.path, self.capacity_column)


DATASETS = {
    dataset.key: dataset
    for dataset in (
        DemandDataset("helios-earth", "Helios Earth, all 16 virtual clusters", HELIOS_DIR / "earth_all16vcs_hourly.csv",
                      "GPUs", load_helios, "capacity_gpus"),
        DemandDataset("helios-vc6YE", "Helios Earth, virtual cluster vc6YE", HELIOS_DIR / "vc6YE_hourly.csv",
                      "GPUs", load_helios, "capacity_gpus"),
        DemandDataset("helios-vcvlY", "Helios Earth, virtual cluster vcvlY", HELIOS_DIR / "vcvlY_hourly.csv",
                      "GPUs", load_helios, "capacity_gpus"),
        DemandDataset("helios-vcpDC", "Helios Earth, virtual cluster vcpDC", HELIOS_DIR / "vcpDC_hourly.csv",
                      "GPUs", load_helios, "capacity_gpus"),
        DemandDataset("philly", "Philly, busy servers", PHILLY_DIR / "philly_active_servers_hourly.csv",
                      "servers", load_philly, "servers_total"),
    )
}
"""The shipped demand series by key, in display order."""
