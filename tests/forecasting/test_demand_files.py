"""Readers of the shipped hourly demand files: outage hours are NaN and the index is regular and hourly."""

import numpy as np
import pandas as pd
import pytest

from capacity.demand_files import DATASETS, load_helios, load_philly, read_hourly


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def assert_regular_hourly(series: pd.Series) -> None:
    assert str(series.index.tz) == "UTC"
    assert series.index.is_unique
    assert series.index.is_monotonic_increasing
    assert (series.index[1:] - series.index[:-1] == pd.Timedelta(hours=1)).all()


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_shipped_series_have_regular_index(key):
    series = DATASETS[key].load()

    assert_regular_hourly(series)
    assert series.dtype == float
    assert series.notna().mean() > 0.95


def test_helios_outage_hours_are_nan():
    series = load_helios(DATASETS["helios-earth"].path)

    assert series[utc("2020-05-10 00:00"):utc("2020-05-10 23:00")].isna().all()
    assert series[[utc("2020-05-12 14:00"), utc("2020-05-12 15:00")]].isna().all()
    assert series[[utc("2020-05-09 23:00"), utc("2020-05-11 00:00")]].notna().all()
    assert series[[utc("2020-05-12 13:00"), utc("2020-05-12 16:00")]].notna().all()
    assert series.isna().sum() == 26


def test_helios_vc_outage_hours_are_nan():
    series = DATASETS["helios-vcpDC"].load()

    assert np.isnan(series[utc("2020-05-10 12:00")])
    assert series.isna().sum() == 26


def test_philly_gap_and_outage_are_nan():
    series = load_philly(DATASETS["philly"].path)

    assert series[utc("2017-10-25 15:00"):utc("2017-10-26 18:00")].isna().all()
    assert series[utc("2017-10-25 14:00")] == pytest.approx(317.0)
    assert series[utc("2017-10-26 19:00")] == pytest.approx(278.8)
    assert series.isna().sum() == 28


def test_philly_keeps_local_clock_hours():
    series = DATASETS["philly"].load()

    assert series.index[0] == utc("2017-10-03 00:00")
    assert series.index[-1] == utc("2017-12-15 18:00")
    assert len(series) == 1771


def test_capacity_is_not_masked_at_outages():
    capacity = DATASETS["helios-earth"].load_capacity()

    assert capacity[utc("2020-05-10 12:00")] == 856
    assert capacity.notna().all()


def test_duplicated_and_absent_hours_are_regularized(tmp_path):
    path = tmp_path / "demand.csv"
    path.write_text(
        "hour_start,minutes,demand_gpus_mean\n"
        "2020-01-01 00:00:00,60,10\n"
        "2020-01-01 01:00:00,30,20\n"
        "2020-01-01 01:00:00,30,40\n"
        "2020-01-01 03:00:00,60,50\n"
    )

    frame = read_hourly(path, "demand_gpus_mean")
    series = load_helios(path)

    assert list(frame["minutes"]) == [60, 60, 0, 60]
    assert series[utc("2020-01-01 01:00")] == pytest.approx(30.0)
    assert np.isnan(series[utc("2020-01-01 02:00")])
    assert_regular_hourly(series)


def test_missing_column_raises(tmp_path):
    path = tmp_path / "demand.csv"
    path.write_text("hour_start,minutes\n2020-01-01 00:00:00,60\n")

    with pytest.raises(ValueError, match="demand_gpus_mean"):
        load_helios(path)


def test_registry_units():
    assert {key: dataset.unit for key, dataset in DATASETS.items()} == {
        "helios-earth": "GPUs", "helios-vc6YE": "GPUs", "helios-vcvlY": "GPUs", "helios-vcpDC": "GPUs",
        "philly": "servers",
    }
