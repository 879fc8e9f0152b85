"""A mixed HTTP load for the soak benchmark and the fault-tolerance drills: reservations, cancellations,
heartbeats and reads, from threads that behave as well-written clients do.

A client retries a request that failed with 503 or 429 (after ``Retry-After``, capped) or with a
refused connection, with the same ``Idempotency-Key``, until it gets a final response or the deadline.
Every final response is recorded, so a checker can compare what clients received with the
database afterwards. Standard library only; no Django imports.
"""

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

# Shares and shapes a reservation requests. The window starts within the next week.
SHARE_SIZES = [250, 500, 1000]
CPU_MILLICORES = [1000, 2000, 4000]
MEMORY_MIB = [2048, 4096, 8192]
# Relative frequency of each action of a client.
ACTION_WEIGHTS = {"reserve": 50, "cancel": 15, "heartbeat": 25, "read": 10}
MAX_RETRY_WAIT_SECONDS = 2.0
# Share of reservation requests that wait in the scheduler's queue (202) instead of a 409 when nothing fits.
QUEUE_IF_UNAVAILABLE_SHARE = 0.3


@dataclass
class Agent:
    """A node key and the UUIDs of that node's GPUs, for heartbeats."""

    key: str
    gpu_uuids: list[str]


@dataclass
class LoadResult:
    """The responses the clients received, for the checker."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    # Final responses with a 5xx status, and (seconds since start, status, path) of each 5xx seen, retried or not.
    errors_5xx: int = 0
    error_times: list[tuple[float, int, str]] = field(default_factory=list)
    connection_errors: int = 0
    retries: int = 0
    # Reservation ids the API booked (201, or 202 pending approval), queued (202 queued), rejected (409) and
    # cancelled (200).
    placed: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    # external_ref of every reservation request that got a final response, with its status.
    answered_refs: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def merge(self, other: "LoadResult") -> None:
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.errors_5xx += other.errors_5xx
        self.error_times.extend(other.error_times)
        self.connection_errors += other.connection_errors
        self.retries += other.retries
        self.placed.extend(other.placed)
        self.queued.extend(other.queued)
        self.rejected.extend(other.rejected)
        self.cancelled.extend(other.cancelled)
        self.answered_refs.update(other.answered_refs)
        self.latencies_ms.extend(other.latencies_ms)


class MixedLoad:
    """Run ``threads`` clients against ``base_url`` until ``run`` returns."""

    def __init__(self, base_url: str, customer_tokens: list[str], agents: list[Agent], seed: int = 0,
                 timeout_seconds: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.customer_tokens = customer_tokens
        self.agents = agents
        self.seed = seed
        self.timeout_seconds = timeout_seconds
        self.started = time.monotonic()

    def run(self, seconds: float, threads: int, stop: threading.Event | None = None) -> LoadResult:
        """Send load for ``seconds`` (or until ``stop`` is set) and return the merged result."""
        self.started = time.monotonic()
        deadline = self.started + seconds
        stop = stop or threading.Event()
        results = [LoadResult() for _ in range(threads)]
        workers = [threading.Thread(target=self._client, args=(index, deadline, stop, results[index]), daemon=True)
                   for index in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        total = LoadResult()
        for result in results:
            total.merge(result)
        return total

    def _client(self, index: int, deadline: float, stop: threading.Event, result: LoadResult) -> None:
        rng = random.Random(self.seed * 1000 + index)
        token = self.customer_tokens[index % len(self.customer_tokens)]
        own: list[int] = []
        actions, weights = zip(*ACTION_WEIGHTS.items())
        while time.monotonic() < deadline and not stop.is_set():
            action = rng.choices(actions, weights)[0]
            if action == "reserve":
                self._reserve(rng, token, own, result, deadline)
            elif action == "cancel" and own:
                reservation_id = own.pop(rng.randrange(len(own)))
                status, _ = self._send("POST", f"/api/v1/reservations/{reservation_id}/cancel/", {}, token=token,
                                       result=result, deadline=deadline)
                if status == 200:
                    result.cancelled.append(reservation_id)
            elif action == "heartbeat" and self.agents:
                agent = rng.choice(self.agents)
                body = {"snapshots": [{"at": datetime.now(timezone.utc).isoformat(), "gpus": [
                    {"uuid": gpu, "temperature_c": rng.uniform(35, 70), "utilization_pct": rng.uniform(0, 100)}
                    for gpu in agent.gpu_uuids]}]}
                self._send("POST", "/api/v1/agent/heartbeats/", body, node_key=agent.key, result=result,
                           deadline=deadline)
            else:
                self._send("GET", "/api/v1/reservations/", None, token=token, result=result,
                           deadline=deadline)

    def _reserve(self, rng: random.Random, token: str, own: list[int], result: LoadResult, deadline: float) -> None:
        start = datetime.now(timezone.utc) + timedelta(minutes=rng.randrange(10, 7 * 24 * 60))
        ref = f"load-{uuid.uuid4().hex[:16]}"
        body = {"gpu_count": 1, "gpu_milli_per_gpu": rng.choice(SHARE_SIZES),
                "cpu_millicores": rng.choice(CPU_MILLICORES), "memory_mib": rng.choice(MEMORY_MIB),
                "start_at": start.isoformat(), "end_at": (start + timedelta(hours=rng.randint(1, 6))).isoformat(),
                "external_ref": ref}
        if rng.random() < QUEUE_IF_UNAVAILABLE_SHARE:
            body["queue_if_unavailable"] = True
            body["interruptible"] = rng.random() < 0.5
        status, data = self._send("POST", "/api/v1/reservations/", body, token=token, result=result,
                                  deadline=deadline, idempotency_key=ref)
        if status is None:
            return
        result.answered_refs[ref] = status
        # A 409 carries the rejected reservation under "reservation"; 201 and 202 are the reservation itself.
        reservation = (data or {}).get("reservation", data or {})
        reservation_id = reservation.get("id") if isinstance(reservation, dict) else None
        if status == 202 and reservation.get("status") == "queued":
            result.queued.append(reservation_id)
            own.append(reservation_id)
        elif status in (201, 202) and reservation_id:
            result.placed.append(reservation_id)
            own.append(reservation_id)
        elif status == 409 and reservation_id:
            result.rejected.append(reservation_id)

    def _send(self, method: str, path: str, body: dict | None, *, result: LoadResult, deadline: float,
              token: str | None = None, node_key: str | None = None,
              idempotency_key: str | None = None) -> tuple[int | None, dict | None]:
        """Send until a final response or ``deadline``; return its status and JSON body (None, None without one)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        if node_key:
            headers["Authorization"] = f"Node {node_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = json.dumps(body).encode() if body is not None else None
        while True:
            began = time.monotonic()
            request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
            result.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    status, payload, retry_after = response.status, response.read(), None
            except urllib.error.HTTPError as error:
                status, payload, retry_after = error.code, error.read(), error.headers.get("Retry-After")
            except (urllib.error.URLError, OSError):
                # Refused or reset: the server is restarting. Retry while there is time.
                result.connection_errors += 1
                if time.monotonic() + 0.5 > deadline + 30:
                    return None, None
                time.sleep(0.5)
                result.retries += 1
                continue
            result.statuses[status] += 1
            result.latencies_ms.append((time.monotonic() - began) * 1000)
            if status >= 500:
                result.error_times.append((round(began - self.started, 1), status, path))
            retryable = status in (429, 503) or (status >= 500 and idempotency_key is not None)
            # Requests that started before the deadline may finish up to 30 s after it, so none is left unanswered.
            if retryable and time.monotonic() < deadline + 30:
                wait = min(float(retry_after or 1), MAX_RETRY_WAIT_SECONDS)
                result.retries += 1
                time.sleep(wait)
                continue
            if status >= 500:
                result.errors_5xx += 1
            try:
                return status, json.loads(payload) if payload else None
            except ValueError:
                return status, None
