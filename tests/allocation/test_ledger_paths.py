"""The capacity ledger's Python loop and NumPy arrays (``ledger_arrays``) return the same shortlists, room and prices.

Each seed builds a ledger through a random series of changes, as the change feed applies them:
nodes put, changed with ``dataclasses.replace`` and dropped while their bookings remain, bookings
put, put again under the same id and dropped. Then each query runs twice, once with each path
forced through ``ledger.ARRAYS_FROM_BOOKINGS``, and both results must be equal, and must agree
with a brute-force check of every node and instant. No database.
"""

import random
from dataclasses import dataclass, field, replace
from decimal import Decimal

import pytest

from allocation import ledger as ledger_module
from allocation import ledger_arrays
from allocation.ledger import HOUR_MICROS, Booking, CapacityLedger, FleetNode, NodeSearch
from allocation.solvers import PlacementRequest

from .test_ledger import brute_peak

HOUR = HOUR_MICROS
EPOCH = 1_700_000_000 * 1_000_000
"""Instants start here (November 2023), as real ones do, not at 0."""
PRICES = ("1.5", "2.0", "2.5", "2.50", "2.50000000000000000001", "3")


@dataclass
class Scenario:
    """The ledger built for one seed, and what the generator remembers for choosing queries."""

    ledger: CapacityLedger
    instants: list[int] = field(default_factory=list)
    """Starts and ends of bookings and shares, for windows that touch them exactly."""
    prices: set[Decimal] = field(default_factory=set)


def fleet_node(rng: random.Random, node_id: int, gpu_ids: tuple[int, ...]) -> FleetNode:
    healthy = tuple(gpu for gpu in gpu_ids if rng.random() > 0.2)
    maintenance = ()
    if rng.random() < 0.1:
        maintenance = ((EPOCH + rng.randrange(0, 60) * HOUR, EPOCH + rng.randrange(60, 80) * HOUR),)
    region_id = rng.choice([1, 2])
    return FleetNode(
        id=node_id, gpu_model_id=rng.choice([1, 2, 3]), gpu_model_name="T4", region_id=region_id,
        hostname=f"n{node_id}", gpu_count=len(gpu_ids), cpu_millicores=rng.choice([0, 8000, 16000, 32000]),
        memory_mib=rng.choice([0, 32768, 65536]), price_per_gpu_hour=Decimal(rng.choice(PRICES)),
        currency=rng.choice(["USD", "USD", "EUR"]), active=rng.random() > 0.1, healthy_gpu_ids=healthy,
        maintenance=maintenance, gpu_ids=gpu_ids, region_code=f"r{region_id}")


def random_window(rng: random.Random, instants: list[int]) -> tuple[int, int]:
    """Return a window of 15 minutes to 400 hours, often starting or ending exactly where a booking does."""
    start = (rng.choice(instants) if instants and rng.random() < 0.4
             else EPOCH + rng.randrange(0, 100 * HOUR, rng.choice([HOUR // 4, HOUR, 7])))
    if instants and rng.random() < 0.3:
        later = [instant for instant in instants if instant > start]
        if later:
            return start, rng.choice(later)
    return start, start + rng.choice([1, HOUR // 4, HOUR, 5 * HOUR, 30 * HOUR, 169 * HOUR, 400 * HOUR])


def build(seed: int, *, id_base: int = 1, changes: tuple[int, int] = (0, 150)) -> Scenario:
    """Build a ledger for ``seed`` with a number of changes in the range ``changes``, and ids from ``id_base`` on."""
    rng = random.Random(seed)
    ledger = CapacityLedger()
    scenario = Scenario(ledger)
    next_node, next_gpu = id_base, id_base * 10
    dropped: dict[int, FleetNode] = {}
    future_gpus: list[int] = []
    """GPU ids that no node has yet. A share can use one before its node arrives, as within one feed read."""

    def new_gpus(count: int) -> tuple[int, ...]:
        nonlocal next_gpu
        arrived = [future_gpus.pop() for _ in range(min(count, len(future_gpus))) if rng.random() < 0.5]
        fresh = tuple(range(next_gpu, next_gpu + count - len(arrived)))
        next_gpu += len(fresh)
        return tuple(sorted(arrived + list(fresh)))

    def put_new_node() -> None:
        nonlocal next_node
        ledger.put_node(fleet_node(rng, next_node, new_gpus(rng.choice([0, 1, 2, 4, 8]))))
        next_node += 1

    def any_gpu() -> int:
        nonlocal next_gpu
        known = [gpu for node in ledger.nodes.values() for gpu in node.gpu_ids]
        if known and rng.random() < 0.9:
            return rng.choice(known)
        future_gpus.append(next_gpu)
        next_gpu += 1
        return future_gpus[-1]

    def random_booking(booking_id: int) -> Booking:
        if ledger.nodes and rng.random() < 0.9:
            node = rng.choice(list(ledger.nodes.values()))
            node_id, model_id = node.id, node.gpu_model_id
        else:  # A node that was dropped or has not arrived yet.
            node, node_id, model_id = None, rng.choice([*dropped, next_node]), rng.choice([1, 2, 3])
        start = EPOCH + rng.randrange(0, 100 * HOUR, rng.choice([HOUR // 4, HOUR, 7]))
        end = start + rng.choice([0, 0, 1, HOUR // 2, HOUR, 3 * HOUR, 30 * HOUR, 200 * HOUR, 2000 * HOUR])
        milli = rng.choice([1000, 500, 250, 1, 0])
        shares = []
        if node is not None and node.gpu_ids and rng.random() < 0.8:
            gpus = rng.sample(node.gpu_ids, rng.randint(1, len(node.gpu_ids)))
        else:
            gpus = []
        if rng.random() < 0.25:  # A share on another node's GPU, as after a migration.
            gpus.append(any_gpu())
        for gpu in dict.fromkeys(gpus):
            share_start, share_end = start, end
            if rng.random() < 0.2:  # A share with a window of its own, empty now and then.
                share_start = start + rng.choice([-HOUR, 0, HOUR])
                share_end = share_start + rng.choice([0, HOUR, 10 * HOUR])
            shares.append((gpu, milli, share_start, share_end))
            scenario.instants.extend((share_start, share_end))
        scenario.instants.extend((start, end))
        return Booking(id=booking_id, node_id=node_id, customer_id=rng.choice([1, 2]), gpu_model_id=model_id,
                       start=start, end=end, cpu_millicores=rng.choice([0, 1000, 8000]),
                       memory_mib=rng.choice([0, 4096, 32768]), gpu_milli_total=milli * len(shares),
                       shares=tuple(shares))

    for _ in range(rng.choice([0, 1, 3, 8, 15])):
        put_new_node()
    next_booking = 1
    for _ in range(rng.randint(*changes)):
        action = rng.random()
        if action < 0.55:
            ledger.put_booking(random_booking(next_booking))
            next_booking += 1
        elif action < 0.65 and ledger.bookings:  # The same id put again with new content.
            ledger.put_booking(random_booking(rng.choice(list(ledger.bookings))))
        elif action < 0.75 and ledger.bookings:
            ledger.drop_booking(rng.choice(list(ledger.bookings)))
        elif action < 0.85 and ledger.nodes:
            node = rng.choice(list(ledger.nodes.values()))
            ledger.put_node(changed_node(rng, node, new_gpus))
        elif action < 0.9 and ledger.nodes:
            node_id = rng.choice(list(ledger.nodes))
            dropped[node_id] = ledger.nodes[node_id]
            ledger.drop_node(node_id)
        elif action < 0.95 and dropped:  # A dropped node comes back, perhaps changed.
            node = dropped.pop(rng.choice(list(dropped)))
            ledger.put_node(node if rng.random() < 0.5 else changed_node(rng, node, new_gpus))
        else:
            put_new_node()
    scenario.prices = {node.price_per_gpu_hour for node in ledger.nodes.values()}
    return scenario


def changed_node(rng: random.Random, node: FleetNode, new_gpus) -> FleetNode:
    """Return ``node`` with one to three of its model, GPUs, health, price, status or maintenance changed."""
    for _ in range(rng.randint(1, 3)):
        change = rng.randrange(7)
        if change == 0:
            node = replace(node, gpu_model_id=rng.choice([1, 2, 3]))
        elif change == 1:  # GPUs removed, added, or both.
            remaining = tuple(gpu for gpu in node.gpu_ids if rng.random() < 0.7)
            gpu_ids = tuple(sorted(remaining + new_gpus(rng.choice([0, 1, 2]))))
            node = replace(node, gpu_ids=gpu_ids, gpu_count=len(gpu_ids),
                           healthy_gpu_ids=tuple(gpu for gpu in gpu_ids if rng.random() > 0.2))
        elif change == 2:
            node = replace(node, healthy_gpu_ids=tuple(gpu for gpu in node.gpu_ids if rng.random() > 0.4))
        elif change == 3:
            node = replace(node, price_per_gpu_hour=Decimal(rng.choice(PRICES)))
        elif change == 4:
            node = replace(node, active=not node.active)
        elif change == 5:
            node = replace(node, cpu_millicores=rng.choice([0, 8000, 16000]), memory_mib=rng.choice([0, 65536]))
        else:
            node = replace(node, maintenance=() if node.maintenance else ((EPOCH + 10 * HOUR, EPOCH + 20 * HOUR),))
    return node


def random_query(rng: random.Random, scenario: Scenario) -> tuple[PlacementRequest, int, int, NodeSearch]:
    start, end = random_window(rng, scenario.instants)
    gpu_count = rng.choice([0, 0, 1, 1, 2, 4])
    request = PlacementRequest(gpu_count=gpu_count,
                               gpu_milli_per_gpu=rng.choice([1, 250, 500, 1000] + ([0] if not gpu_count else [])),
                               cpu_millicores=rng.choice([0, 0, 1000, 8000, 16000]),
                               memory_mib=rng.choice([0, 0, 4096, 32768]))
    cap = None
    if rng.random() < 0.5:
        cap = Decimal(rng.choice(PRICES))
        if scenario.prices and rng.random() < 0.5:  # A node's price, give or take a digit the float loses.
            cap = rng.choice(sorted(scenario.prices)) + rng.choice([Decimal(0), Decimal("1e-20"), Decimal("-1e-20")])
    models = rng.choice([(1,), (2,), (3,), (1, 2), (1, 2, 3), (2, 2), ()])
    return request, start, end, NodeSearch(gpu_model_ids=models, region_id=rng.choice([None, 1]),
                                           max_price_per_gpu_hour=cap)


def results(ledger: CapacityLedger, query, limits: tuple[int, int]):
    request, start, end, search = query
    used_limit, free_limit = limits
    return (ledger.shortlist(request, start, end, search, used_limit=used_limit, free_limit=free_limit),
            ledger.has_room(request, start, end, search),
            sorted(ledger.lowest_prices(request, start, end, search)))


def both_paths(ledger: CapacityLedger, query, limits: tuple[int, int], monkeypatch):
    """Return the results with the Python loop forced, then with the arrays forced."""
    found = []
    for threshold in (10**9, 0):
        monkeypatch.setattr(ledger_module, "ARRAYS_FROM_BOOKINGS", threshold)
        found.append(results(ledger, query, limits))
    return found


def brute_free(ledger: CapacityLedger, node: FleetNode, start: int, end: int):
    """Return the node's free CPU, memory and ``(gpu_id, milli)`` per healthy GPU at the window's peak, row by row."""
    on_node = [booking for booking in ledger.bookings.values() if booking.node_id == node.id]
    cpu = node.cpu_millicores - brute_peak([(b.start, b.end, b.cpu_millicores) for b in on_node], start, end)
    memory = node.memory_mib - brute_peak([(b.start, b.end, b.memory_mib) for b in on_node], start, end)
    gpus = tuple((gpu, 1000 - brute_peak([(share_start, share_end, milli) for b in ledger.bookings.values()
                                          for share_gpu, milli, share_start, share_end in b.shares
                                          if share_gpu == gpu], start, end))
                 for gpu in node.healthy_gpu_ids)
    return cpu, memory, gpus


def brute_fitting(ledger: CapacityLedger, query) -> dict[int, tuple]:
    """Return the free capacity of each node of the search that can hold the request, by node id."""
    request, start, end, search = query
    fitting = {}
    for node in ledger.nodes.values():
        if not search.admits(node) or node.in_maintenance(start, end):
            continue
        cpu, memory, gpus = free = brute_free(ledger, node, start, end)
        if (cpu >= request.cpu_millicores and memory >= request.memory_mib
                and sum(milli >= request.gpu_milli_per_gpu for _gpu, milli in gpus) >= request.gpu_count):
            fitting[node.id] = free
    return fitting


def check_against_brute_force(ledger: CapacityLedger, query, found) -> None:
    states, room, prices = found
    fitting = brute_fitting(ledger, query)
    request, start, end, _search = query
    for state in states:
        free = (state.cpu_free_millicores, state.memory_free_mib, state.gpu_free_milli)
        assert free == brute_free(ledger, ledger.nodes[state.node_id], start, end), state
        assert state.can_hold(request) == (state.node_id in fitting), state
    assert room == bool(fitting)
    lowest = {}
    for node_id in fitting:
        node = ledger.nodes[node_id]
        key = (node.gpu_model_id, node.region_code, node.currency)
        lowest[key] = min(lowest.get(key, node.price_per_gpu_hour), node.price_per_gpu_hour)
    assert prices == sorted((model, region, price, currency) for (model, region, currency), price in lowest.items())


def compare_paths(seed: int, monkeypatch, *, id_base: int = 1, changes: tuple[int, int] = (0, 150),
                  queries: int = 8) -> None:
    """Run random queries on the ledger of ``seed`` with each path, and check both against brute force."""
    scenario = build(seed, id_base=id_base, changes=changes)
    rng = random.Random(f"queries {seed}")
    for _ in range(queries):
        query = random_query(rng, scenario)
        limits = (rng.choice([0, 1, 4, 50]), rng.choice([0, 1, 3]))
        python, arrays = both_paths(scenario.ledger, query, limits, monkeypatch)
        assert python == arrays, (seed, query, limits)
        check_against_brute_force(scenario.ledger, query, python)


@pytest.mark.parametrize("seed", range(300))
def test_python_and_arrays_agree(seed, monkeypatch):
    compare_paths(seed, monkeypatch)


@pytest.mark.parametrize("seed", range(40))
def test_paths_agree_binary_search_compaction(seed, monkeypatch):
    """Ids above ``LOOKUP_IDS_UP_TO`` are found by binary search, and rows are compacted after drops."""
    monkeypatch.setattr(ledger_arrays, "LOOKUP_IDS_UP_TO", 50)
    monkeypatch.setattr(ledger_arrays, "COMPACT_AFTER_DEAD_ROWS", 0)
    compare_paths(seed, monkeypatch, id_base=random.Random(seed).choice([1, 40, 10**6, 2**40]))


@pytest.mark.parametrize("seed", range(3))
def test_paths_agree_past_initial_rows(seed, monkeypatch):
    """More rows than ``BookingRows`` starts with (1024), so its columns grow."""
    compare_paths(seed, monkeypatch, changes=(3000, 3500), queries=4)


def node_with(node_id: int, model_id: int, gpu_ids: tuple[int, ...]) -> FleetNode:
    return FleetNode(id=node_id, gpu_model_id=model_id, gpu_model_name="T4", region_id=1, hostname=f"n{node_id}",
                     gpu_count=len(gpu_ids), cpu_millicores=8000, memory_mib=8192,
                     price_per_gpu_hour=Decimal("1"), currency="USD", active=True, healthy_gpu_ids=gpu_ids,
                     maintenance=(), gpu_ids=gpu_ids, region_code="r1")


def test_model_change_keeps_cpu_only_booking(monkeypatch):
    """A booking without GPU shares still takes its node's CPU after the node's GPU model changes."""
    ledger = CapacityLedger()
    node = node_with(1, 1, (10,))
    ledger.put_node(node)
    ledger.put_booking(Booking(id=1, node_id=1, customer_id=1, gpu_model_id=1, start=0, end=HOUR,
                               cpu_millicores=8000, memory_mib=0, gpu_milli_total=0, shares=()))
    ledger.put_node(replace(node, gpu_model_id=2))
    request = PlacementRequest(gpu_count=0, gpu_milli_per_gpu=0, cpu_millicores=1000, memory_mib=0)
    query = (request, 0, HOUR, NodeSearch(gpu_model_ids=(2,)))

    python, arrays = both_paths(ledger, query, (4, 2), monkeypatch)

    assert python == arrays
    assert python[1] is False


def test_share_put_before_its_node(monkeypatch):
    """A share on a GPU whose node arrives later, as when one feed read adds both, takes that GPU."""
    ledger = CapacityLedger()
    ledger.put_node(node_with(2, 1, (20,)))
    ledger.put_booking(Booking(id=1, node_id=2, customer_id=1, gpu_model_id=1, start=0, end=HOUR, cpu_millicores=0,
                               memory_mib=0, gpu_milli_total=1000, shares=((10, 1000, 0, HOUR),)))
    ledger.put_node(node_with(1, 2, (10,)))
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0)
    query = (request, 0, HOUR, NodeSearch(gpu_model_ids=(2,)))

    python, arrays = both_paths(ledger, query, (4, 2), monkeypatch)

    assert python == arrays
    assert python[1] is False  # ``has_room`` checks ``_idle`` first, on either path.
