"""The deployment's processes for fault-tolerance drills: a private Redis, gunicorn and Celery workers.

Each drill gets its own Redis server on a free port, so restarting it touches no other test, and
points gunicorn and the workers at the test database. Processes log to files under ``workdir``
that the drills read (for example to count how often a task started).
"""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection

from bench.redis_server import PrivateRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_for(condition, timeout: float = 60.0, interval: float = 0.2, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(interval)


def database_url_of_tests() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@dataclass
class Stack:
    """Handles of a running drill stack."""

    workdir: Path
    redis: PrivateRedis
    env: dict
    url: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=self.env, start_new_session=True,
            stdout=(self.workdir / f"{name}.log").open("a"), stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    def start_web(self, workers: int = 2) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.start("web", [str(BIN / "gunicorn"), "marketplace.wsgi", "--workers", str(workers), "--bind",
                           f"127.0.0.1:{port}", "--timeout", "60", "--graceful-timeout", "5"])
        wait_for(self._web_responds, timeout=60, message="gunicorn responding")

    def start_worker(self, name: str, queue: str, pool: str = "prefork", supervised: bool = False) -> subprocess.Popen:
        """Start a Celery worker; ``supervised`` runs it under ``bin/respawn``, as ``make up`` does."""
        command = [
            sys.executable, "-m", "celery", "-A", "marketplace", "worker", f"--hostname={name}@drill",
            f"--pool={pool}", "--concurrency=1", "-Q", queue, "--without-heartbeat", "--without-mingle",
            "--without-gossip", "--loglevel=INFO",
        ]
        process = self.start(name, [str(REPO_ROOT / "bin" / "respawn"), *command] if supervised else command)
        wait_for(lambda: "ready" in self.log(name), timeout=60, message=f"worker {name} ready")
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (a prefork worker's pool), as a lost machine would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def _web_responds(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/live/", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


@contextmanager
def drill_stack(workdir: Path, **settings_env: str):
    """Yield a ``Stack`` with a private Redis started, over the test database; stop everything afterwards.

    ``settings_env`` adds environment variables that the settings read (for example a short
    ``CELERY_VISIBILITY_TIMEOUT``).
    """
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL")
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("needs redis-server on the PATH")
    redis = PrivateRedis(workdir / "redis.log")
    redis.start()
    env = {
        **os.environ, "DATABASE_URL": database_url_of_tests(), "REDIS_URL": redis.url, "DEBUG": "false",
        "SECRET_KEY": "drill-secret-key-" + "x" * 40, "SECURE_SSL_REDIRECT": "false", "SECURE_COOKIES": "false",
        "LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1", **settings_env,
    }
    stack = Stack(workdir=workdir, redis=redis, env=env)
    try:
        yield stack
    finally:
        stack.stop_all()
        redis.stop()
