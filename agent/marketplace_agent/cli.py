"""``marketplace-agent``: run the provider agent on a GPU node."""

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from .agent import Agent, AgentConfig
from .client import MarketplaceClient
from .discovery import DiscoveryError, open_backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="marketplace-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MARKETPLACE_URL", "http://127.0.0.1:8000"),
                        help="The marketplace's base URL (env MARKETPLACE_URL).")
    parser.add_argument("--key", default=os.environ.get("MARKETPLACE_NODE_KEY"),
                        help="This node's key from 'manage.py issue_node_key' (env MARKETPLACE_NODE_KEY).")
    parser.add_argument("--backend", choices=["auto", "nvml", "nvidia-smi", "fake"], default="auto",
                        help="How to read the GPUs: NVML, then nvidia-smi (auto), or a recording (fake).")
    parser.add_argument("--recording", type=Path, help="Recording for the fake backend (default: 8 healthy GPUs).")
    parser.add_argument("--uuid", action="append", default=[],
                        help="GPU UUID to use in place of the recording's, in order; repeat per GPU. Without it the "
                             "fake backend derives UUIDs from the node key, so each node's GPUs differ.")
    parser.add_argument("--interval", type=float, default=10.0, help="Seconds between readings (default 10).")
    parser.add_argument("--buffer", type=int, default=360, help="Readings kept while the marketplace is down.")
    parser.add_argument("--iterations", type=int, default=None, help="Stop after this many intervals.")
    parser.add_argument("--discover", action="store_true", help="Print what discovery finds as JSON and exit.")
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=arguments.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    try:
        seed = arguments.key.split("_")[1] if arguments.key and arguments.key.count("_") >= 2 else None
        backend = open_backend(arguments.backend, recording=arguments.recording, uuids=arguments.uuid or None,
                               uuid_seed=seed)
    except DiscoveryError as error:
        print(f"marketplace-agent: {error}", file=sys.stderr)
        return 2
    if arguments.discover:
        print(json.dumps(backend.inventory().as_json(), indent=2))
        return 0
    if not arguments.key:
        print("marketplace-agent: no node key; pass --key or set MARKETPLACE_NODE_KEY.", file=sys.stderr)
        return 2
    if not math.isfinite(arguments.interval) or not 0 < arguments.interval <= 86400 or arguments.buffer < 1:
        print("marketplace-agent: --interval must be 0 to 86400 seconds and --buffer at least 1.", file=sys.stderr)
        return 2
    try:
        client = MarketplaceClient(arguments.url, arguments.key)
    except ValueError as error:
        print(f"marketplace-agent: --url: {error}", file=sys.stderr)
        return 2

    config = AgentConfig(interval_seconds=arguments.interval, buffer_size=arguments.buffer)
    agent = Agent(backend, client, config)
    try:
        agent.run(iterations=arguments.iterations)
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("Stopped by the user")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
