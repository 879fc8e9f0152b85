"""gunicorn hooks for the web process. gunicorn loads ./gunicorn.conf.py from its working directory by default.

The Procfile's command line sets everything else. This file only keeps prometheus_client's
multiprocess mode correct when ``PROMETHEUS_MULTIPROC_DIR`` is set (bin/up sets it).
"""

import os

from prometheus_client import multiprocess


def child_exit(server, worker):
    """Remove the live-gauge files of a worker that exited, so a scrape stops counting it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
