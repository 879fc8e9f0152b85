"""Load generator for `make bench-api`: concurrent HTTP clients against a running server.

Runs in its own process. Each thread sends requests until the deadline over one
``http.client.HTTPConnection``, which opens the connection again whenever the server closed it;
gunicorn's sync workers close it after every response. The summary (statuses, latencies, ids of
placed and rejected reservations) is written as JSON.

    python -m bench.api_client --url http://127.0.0.1:8211 --tokens tokens.json --mix spread \\
        --seconds 20 --clients 16 --output result.json
"""

import argparse
import http.client
import json
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

SHARE_SIZES = [(1000, 50), (810, 14), (470, 10), (320, 5), (650, 4), (230, 2), (460, 2)]
"""Most common per-GPU milli in the Alibaba trace, with rough weights."""
GPU_COUNTS = [(1, 90), (2, 5), (4, 3), (8, 2)]
MODELS = ["A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"]
SCARCEST_MODEL = "A10"


def weighted(rng: random.Random, pairs):
    values, weights = zip(*pairs)
    return rng.choices(values, weights=weights)[0]


def reservation_body(rng: random.Random, mix: str, base: datetime, serial: int) -> dict:
    """Return one request body; ``contended`` sends most clients after the scarcest model in one window.

    Any other mix sends spread requests. ``external_ref`` names the mix, so no two mixes collide.
    """
    if mix == "contended" and rng.random() < 0.8:
        start = base + timedelta(hours=1)
        return {"gpu_count": 1, "cpu_millicores": 2000, "memory_mib": 4096, "gpu_models": [SCARCEST_MODEL],
                "start_at": start.isoformat(), "end_at": (start + timedelta(hours=2)).isoformat(),
                "external_ref": f"bench-{mix}-{serial}"}
    gpu_count = weighted(rng, GPU_COUNTS)
    milli = weighted(rng, SHARE_SIZES) if gpu_count == 1 else 1000
    start = base + timedelta(minutes=rng.randrange(0, 7 * 24 * 60))
    body = {
        "gpu_count": gpu_count, "gpu_milli_per_gpu": milli,
        "cpu_millicores": rng.choice([1000, 2000, 4000, 8000]), "memory_mib": rng.choice([2048, 4096, 8192, 16384]),
        "start_at": start.isoformat(), "end_at": (start + timedelta(hours=rng.randint(1, 8))).isoformat(),
        "external_ref": f"bench-{mix}-{serial}",
    }
    if rng.random() < 0.5:
        body["gpu_models"] = [rng.choice(MODELS)]
    return body


def run_client(index, url, token, mix, deadline, base, results, lock):
    rng = random.Random(f"{mix}:{index}")  # Each mix gets its own sequence, so spread does not repeat the warm-up.
    target = urlparse(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    records = []
    serial = index * 1_000_000
    while time.monotonic() < deadline:
        serial += 1
        if mix == "floor":
            path, payload = "/api/v1/ping/", b""
        else:
            path, payload = "/api/v1/reservations/", json.dumps(reservation_body(rng, mix, base, serial)).encode()
        started = time.perf_counter()
        try:
            connection.request("POST", path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as error:
            records.append({"status": 0, "ms": (time.perf_counter() - started) * 1000, "error": str(error)})
            connection.close()
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            continue
        record = {"status": status, "ms": (time.perf_counter() - started) * 1000}
        if mix != "floor" and status in (201, 202, 409):
            parsed = json.loads(data)
            reservation = parsed.get("reservation", parsed)
            record["id"] = reservation.get("id") if isinstance(reservation, dict) else None
        records.append(record)
    connection.close()
    with lock:
        results.extend(records)


def main() -> None:
    parser = argparse.ArgumentParser(description="Send concurrent reservation requests to a running server.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="JSON list of API tokens, one per customer.")
    parser.add_argument("--mix", choices=["warmup", "spread", "contended", "floor", "record_only", "validate_only"],
                        required=True,
                        help="warmup and the ceiling mixes send spread requests with external_ref values of their own.")
    parser.add_argument("--seconds", type=float, default=20.0, help="How long to send requests.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent client threads.")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    tokens = json.loads(args.tokens.read_text())
    base = (datetime.now(timezone.utc) + timedelta(days=1)).replace(second=0, microsecond=0)
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds
    started = time.perf_counter()
    threads = [
        threading.Thread(target=run_client, args=(i, args.url, tokens[i % len(tokens)], args.mix, deadline, base,
                                                  results, lock))
        for i in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    args.output.write_text(json.dumps({"seconds": time.perf_counter() - started, "records": results}))


if __name__ == "__main__":
    main()
