"""The agent's loop: register, then read the GPUs every interval and send the readings.

Outages of the marketplace never stop the agent. Readings wait in a bounded buffer (the oldest
are dropped when it is full) and are sent, oldest first, once the marketplace responds again.
Failed calls are retried with exponential backoff and jitter, capped at ``max_backoff_seconds``.
An error the agent does not expect is logged and the loop goes on.
"""

import collections
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from . import __version__
from .client import MarketplaceClient, RejectedError, TransientError
from .discovery import DiscoveryError

logger = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    interval_seconds: float = 10.0
    buffer_size: int = 360
    """Snapshots kept while the marketplace is unreachable: an hour at the default interval."""
    batch_size: int = 60
    """Snapshots sent in one heartbeat request."""
    max_backoff_seconds: float = 300.0


class Agent:
    def __init__(self, backend, client: MarketplaceClient, config: AgentConfig | None = None, *,
                 sleep=time.sleep, clock=time.monotonic, random_fraction=random.random):
        self.backend = backend
        self.client = client
        self.config = config or AgentConfig()
        self.buffer: collections.deque = collections.deque(maxlen=self.config.buffer_size)
        self.registered = False
        self.dropped = 0
        self.failures = 0
        self._sleep, self._clock, self._random = sleep, clock, random_fraction
        self._next_attempt = 0.0

    def run(self, *, iterations: int | None = None) -> None:
        """Run ``iterations`` intervals, or forever; never raise except on KeyboardInterrupt."""
        logger.info("Agent %s started with the %s backend", __version__, getattr(self.backend, "name", "?"))
        count = 0
        while iterations is None or count < iterations:
            started = self._clock()
            try:
                self.step()
            except Exception:  # the loop must survive anything a backend or the network throws
                logger.exception("Agent step failed; going on")
            count += 1
            if iterations is None or count < iterations:
                self._sleep(max(0.0, self.config.interval_seconds - (self._clock() - started)))
        logger.info("Agent stopped after %d intervals", count)

    def step(self) -> None:
        """Take one snapshot of the GPUs, then register and send what is buffered if the backoff allows."""
        try:
            snapshot = {"at": datetime.now(timezone.utc).isoformat(),
                        "gpus": [reading.as_json() for reading in self.backend.readings()]}
        except DiscoveryError as error:
            logger.warning("Reading the GPUs failed: %s", error)
            snapshot = None
        if snapshot is not None:
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    logger.warning("Reading buffer full (%d snapshots); dropped %d oldest so far",
                                   self.buffer.maxlen, self.dropped)
            self.buffer.append(snapshot)
        if self._clock() < self._next_attempt:
            return
        try:
            if not self.registered:
                self._register()
            self._flush()
        except TransientError as error:
            self._back_off(error)
        except RejectedError as error:
            # Rejected data would be rejected again: drop the batch, keep the rest, retry later.
            logger.error("The marketplace rejected a request: %s", error)
            self._back_off(error)

    def _register(self) -> None:
        inventory = self.backend.inventory()
        answer = self.client.register(inventory.as_json(), __version__)
        self.registered = True
        logger.info("Registered %d GPUs with the %s backend: %s", len(inventory.gpus), inventory.backend,
                    answer.get("detail", ""))

    def _flush(self) -> None:
        while self.buffer:
            batch = [self.buffer[index] for index in range(min(self.config.batch_size, len(self.buffer)))]
            try:
                self.client.heartbeat(batch, __version__)
            except RejectedError:
                for _ in batch:
                    self.buffer.popleft()
                raise
            for _ in batch:
                self.buffer.popleft()
        if self.failures:
            logger.info("The marketplace responds again after %d failed attempts", self.failures)
        self.failures = 0

    def _back_off(self, error: Exception) -> None:
        self.failures += 1
        delay = min(self.config.max_backoff_seconds, self.config.interval_seconds * 2 ** min(self.failures, 16))
        delay *= 0.5 + self._random() / 2
        self._next_attempt = self._clock() + delay
        logger.warning("Attempt %d failed (%s); next try in %.0f s, %d snapshots buffered", self.failures, error,
                       delay, len(self.buffer))
