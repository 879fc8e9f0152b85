"""Reservation pricing: billed GPU milli (dominant share) and the estimated cost of a window."""

import math
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from marketplace.models import GPU_MILLI_PER_GPU

from .solvers import PlacementRequest

CENT = Decimal("0.01")
PRICE_STEP = Decimal("0.0001")


def charged_price(list_price: Decimal, price_factor: Decimal) -> Decimal:
    """Return the price per GPU-hour a reservation pays on a node: its list price times ``price_factor``, to 4 places."""
    return (list_price * price_factor).quantize(PRICE_STEP)


def node_price_cap(price_cap: Decimal | None, price_factor: Decimal) -> Decimal | None:
    """Return the highest node list price, to 4 places, whose ``charged_price`` stays within ``price_cap``.

    The charged price is rounded, so a list price a little above ``price_cap / price_factor`` may
    still charge exactly ``price_cap``: an interruptible option's price, sent back as the cap,
    must find its node again.
    """
    if price_cap is None:
        return None
    highest = (price_cap / price_factor).quantize(PRICE_STEP, rounding=ROUND_DOWN)
    while charged_price(highest + PRICE_STEP, price_factor) <= price_cap:
        highest += PRICE_STEP
    return highest


def billed_gpu_milli(
    request: PlacementRequest, *, node_gpu_count: int, node_cpu_millicores: int, node_memory_mib: int,
) -> int:
    """Return the GPU milli a reservation pays for: its GPUs, or more if it takes more of the node's CPU or memory.

    A request that takes half of a node's CPU keeps half of its GPUs from other customers, so it
    pays for the largest of its GPU share, CPU share and memory share of the node (dominant share).
    """
    node_gpu_milli = node_gpu_count * GPU_MILLI_PER_GPU
    cpu_share = math.ceil(node_gpu_milli * request.cpu_millicores / node_cpu_millicores)
    memory_share = math.ceil(node_gpu_milli * request.memory_mib / node_memory_mib)
    return max(request.gpu_milli_total, cpu_share, memory_share)


def estimated_cost(
    *, price_per_gpu_hour: Decimal, billed_milli: int, start_at: datetime, end_at: datetime,
) -> Decimal:
    """Return price x billed GPUs x hours of the window, rounded half up to cents."""
    hours = Decimal((end_at - start_at) / timedelta(seconds=1)) / 3600
    gpus = Decimal(billed_milli) / GPU_MILLI_PER_GPU
    return (price_per_gpu_hour * gpus * hours).quantize(CENT, ROUND_HALF_UP)
