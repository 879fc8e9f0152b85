"""Core domain of the GPU marketplace: organizations, providers, regions, nodes and GPUs."""

import os

# One BLAS thread per process, set before numpy loads. Forecasting fits many small models, so extra
# BLAS threads only compete for the cores: on 2 cores a 100-series refresh took 82 s with the
# default and about 30 s with one thread. A value already set in the environment wins.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from .celery import app as celery_app  # noqa: E402 - after the thread settings above

__all__ = ["celery_app"]
