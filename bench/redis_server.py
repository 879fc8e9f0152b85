"""A private Redis server for drills and the soak: its own port, nothing kept on disk, as the deployment runs Redis.

Restarting it touches no other Redis on the machine. ``stop`` kills it at once, so what it held in
memory (queued task messages, heartbeats, throttle counters) is gone, as after a crash.
"""

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` process on ``port`` (a free one by default), logging to ``log_path``."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_seconds: float = 20.0) -> None:
        """Start the server and return once it replies to PING; raise RuntimeError when it does not in time."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_seconds
        while not self.responds():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port} within {timeout_seconds} s; "
                                   f"see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server at once, losing what it held, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def responds(self) -> bool:
        """Return True when the server replies to PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False
