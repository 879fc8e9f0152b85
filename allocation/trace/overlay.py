"""The deterministic marketplace overlay that the trace lacks: providers, regions, prices, customers.

No Django imports. Every choice comes from a seeded ``random.Random`` or a hash of a stable name,
so importing the same trace twice gives the same marketplace.

Prices, in USD per GPU-hour, are on-demand list prices of public clouds (the SkyPilot catalogue
format, snapshot of 2026-05): the median over regions of the per-GPU price of
- T4 0.37, P100 1.50 and V100M16 2.48: Google Cloud, GPU part only;
- V100M32 3.14: Azure ``V100-32GB`` VMs, VM price divided by GPU count;
- A10 1.29: Lambda ``gpu_1x_a10``.
G2 and G3 are models that Alibaba did not disclose; they take 1.50, the median of the five prices
above, as an assumption. Each provider applies a seeded markup between -15 % and +20 %.
"""

import hashlib
import random
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

OVERLAY_SEED = 2023
GPU_UUID_NAMESPACE = uuid.UUID("6f1c2a56-6b8e-4c52-9d0a-3f1f0c5e2b17")

BASE_PRICE_PER_GPU_HOUR = {
    "A10": Decimal("1.29"),
    "G2": Decimal("1.50"),
    "G3": Decimal("1.50"),
    "P100": Decimal("1.50"),
    "T4": Decimal("0.37"),
    "V100M16": Decimal("2.48"),
    "V100M32": Decimal("3.14"),
}

REGIONS = (
    ("us-east", "United States East"),
    ("us-west", "United States West"),
    ("eu-central", "Europe Central"),
    ("ap-southeast", "Asia Pacific Southeast"),
)


@dataclass(frozen=True)
class ProviderProfile:
    slug: str
    name: str
    home_region: str
    markup: Decimal
    weight: float


PROVIDERS = (
    ProviderProfile("helio-compute", "Helio Compute", "us-east", Decimal("1.05"), 0.22),
    ProviderProfile("fjord-gpu", "Fjord GPU", "eu-central", Decimal("0.92"), 0.16),
    ProviderProfile("lotus-cloud", "Lotus Cloud", "ap-southeast", Decimal("0.85"), 0.14),
    ProviderProfile("mesa-datacenters", "Mesa Datacenters", "us-west", Decimal("1.12"), 0.12),
    ProviderProfile("kestrel-labs", "Kestrel Labs", "us-east", Decimal("0.97"), 0.10),
    ProviderProfile("alder-hosting", "Alder Hosting", "eu-central", Decimal("1.20"), 0.09),
    ProviderProfile("monsoon-ai", "Monsoon AI", "ap-southeast", Decimal("1.00"), 0.07),
    ProviderProfile("sierra-racks", "Sierra Racks", "us-west", Decimal("0.90"), 0.05),
    ProviderProfile("tundra-systems", "Tundra Systems", "eu-central", Decimal("1.08"), 0.03),
    ProviderProfile("reef-compute", "Reef Compute", "ap-southeast", Decimal("0.95"), 0.02),
)
HOME_REGION_SHARE = 0.7
"""Fraction of a provider's nodes in its home region; the rest spread evenly over the others."""


@dataclass(frozen=True)
class CustomerProfile:
    slug: str
    name: str
    task_weight: float
    quota_fraction_of_fleet: float
    """Any-model quota as a fraction of the fleet's GPU capacity."""


CUSTOMERS = (
    CustomerProfile("orbit-vision", "Orbit Vision", 0.24, 0.30),
    CustomerProfile("quill-language", "Quill Language Models", 0.18, 0.22),
    CustomerProfile("delta-robotics", "Delta Robotics", 0.14, 0.16),
    CustomerProfile("harbor-genomics", "Harbor Genomics", 0.12, 0.10),
    CustomerProfile("prism-recsys", "Prism Recommender Systems", 0.10, 0.12),
    CustomerProfile("atlas-speech", "Atlas Speech", 0.09, 0.06),
    CustomerProfile("nimbus-research", "Nimbus Research Lab", 0.08, 0.10),
    CustomerProfile("cedar-analytics", "Cedar Analytics", 0.05, 0.03),
)


@dataclass(frozen=True)
class NodePlacement:
    provider: str
    region: str
    price_per_gpu_hour: Decimal


def place_nodes(hostnames: list[str], models: list[str], *, seed: int = OVERLAY_SEED) -> list[NodePlacement]:
    """Assign each node a provider, a region and a price, deterministically from ``seed``."""
    rng = random.Random(seed)
    weights = [provider.weight for provider in PROVIDERS]
    region_codes = [code for code, _ in REGIONS]
    placements = []
    for _hostname, model in zip(hostnames, models, strict=True):
        provider = rng.choices(PROVIDERS, weights=weights)[0]
        if rng.random() < HOME_REGION_SHARE:
            region = provider.home_region
        else:
            region = rng.choice([code for code in region_codes if code != provider.home_region])
        price = (BASE_PRICE_PER_GPU_HOUR[model] * provider.markup).quantize(Decimal("0.01"), ROUND_HALF_UP)
        placements.append(NodePlacement(provider=provider.slug, region=region, price_per_gpu_hour=price))
    return placements


def gpu_uuid(hostname: str, index: int) -> uuid.UUID:
    """Return the stable UUID of GPU ``index`` on ``hostname``."""
    return uuid.uuid5(GPU_UUID_NAMESPACE, f"{hostname}/gpu{index}")


def customer_for_task(task_name: str) -> str:
    """Return the slug of the customer that submits ``task_name``, from a hash of the name."""
    digest = hashlib.sha256(task_name.encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for customer in CUSTOMERS:
        cumulative += customer.task_weight
        if point < cumulative:
            return customer.slug
    return CUSTOMERS[-1].slug


def replica_hostname(hostname: str, replica: int) -> str:
    """Return the hostname of copy ``replica`` of a trace node; copy 0 keeps the trace's name."""
    return hostname if replica == 0 else f"{hostname}-r{replica}"
