"""Forecast many demand series at once, in parallel worker processes where the platform allows."""

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial

from .result import ForecastResult
from .selection import DEFAULT_MAX_TRAIN_HOURS, forecast_series

logger = logging.getLogger(__name__)

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def single_threaded_workers():
    """Set the BLAS thread-count variables to 1 while worker processes start, where the caller left them unset.

    The pool runs up to one process per CPU, so BLAS threads inside a worker only compete for the
    same cores. With two worker processes on a 2-CPU Xeon, the benchmark's 100 series took 71 s
    with two OpenBLAS threads per worker and 27 s with one. Spawned children copy the
    environment when they start, so the parent's BLAS, already loaded, keeps its thread count.
    """
    added = [name for name in BLAS_THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def forecast_many(series_list, horizon: int = 168, season: int = 24, candidates=None,
                  max_train_hours: int = DEFAULT_MAX_TRAIN_HOURS, workers: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> list[ForecastResult]:
    """Run ``forecast_series`` on each history of ``series_list``; results come back in input order.

    ``on_progress(done, total)`` is called in this process as each result arrives, in input order.

    ``workers`` is the number of processes (default: the CPU count, at most one per series).
    The models contain no randomness, so the results equal those of a serial run whatever the
    worker count. With one worker, or inside a daemonic process (a Celery prefork worker may not
    start children), the series run serially in this process.
    """
    series_list = list(series_list)
    work = partial(forecast_series, horizon=horizon, season=season, candidates=candidates,
                   max_train_hours=max_train_hours)
    workers = min(workers or os.cpu_count() or 1, len(series_list))
    started = time.perf_counter()
    logger.info("Forecasting %d series, horizon %d h, %d worker processes", len(series_list), horizon, max(workers, 1))

    results = []
    if workers <= 1 or multiprocessing.current_process().daemon:
        for values in series_list:
            results.append(work(values))
            _report(on_progress, len(results), len(series_list))
    else:
        chunk = max(1, len(series_list) // (4 * workers))
        # Spawned workers start a fresh interpreter, so they do not copy the caller's threads and
        # database connections as fork would, and a Django process may hold both.
        context = multiprocessing.get_context("spawn")
        with single_threaded_workers(), ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(work, series_list, chunksize=chunk):
                results.append(result)
                _report(on_progress, len(results), len(series_list))

    logger.info("Forecast %d series in %.1f s", len(results), time.perf_counter() - started)
    return results


def _report(on_progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(done, total)
