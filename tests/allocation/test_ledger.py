"""The capacity ledger's shortlists and usage match a brute-force check of every node and instant (no database)."""

import random
from dataclasses import replace
from decimal import Decimal

import pytest

from allocation import ledger as ledger_module
from allocation import ledger_arrays
from allocation.ledger import HOUR_MICROS, Booking, CapacityLedger, FleetNode, NodeSearch, peak
from allocation.solvers import PlacementRequest

HOUR = HOUR_MICROS


def brute_peak(rows, start, end):
    """Peak of ``(row_start, row_end, amount)`` rows over the instants of ``[start, end)``, one instant at a time."""
    instants = {start} | {row_start for row_start, _row_end, _amount in rows if start <= row_start < end}
    return max((sum(amount for row_start, row_end, amount in rows if row_start <= at < row_end and row_end > row_start)
                for at in instants), default=0)


def random_fleet(rng: random.Random) -> tuple[CapacityLedger, list[Booking]]:
    ledger = CapacityLedger()
    gpu_id = 1
    for node_id in range(1, rng.randint(3, 25)):
        gpu_count = rng.choice([1, 2, 4, 8])
        gpus = tuple(range(gpu_id, gpu_id + gpu_count))
        gpu_id += gpu_count
        healthy = tuple(gpu for gpu in gpus if rng.random() > 0.1)
        maintenance = ((rng.randrange(0, 48) * HOUR, rng.randrange(49, 60) * HOUR),) if rng.random() < 0.1 else ()
        ledger.put_node(FleetNode(
            id=node_id, gpu_model_id=rng.choice([1, 2]), gpu_model_name="T4", region_id=rng.choice([1, 2]),
            hostname=f"n{node_id}", gpu_count=gpu_count, cpu_millicores=rng.choice([16000, 32000]),
            memory_mib=rng.choice([65536, 131072]), price_per_gpu_hour=Decimal(rng.choice(["1.5", "2.0", "2.5"])),
            currency="USD", active=rng.random() > 0.1, healthy_gpu_ids=healthy, maintenance=maintenance,
            gpu_ids=gpus))
    bookings = []
    for booking_id in range(1, rng.randint(1, 120)):
        node = rng.choice(list(ledger.nodes.values()))
        start = rng.randrange(0, 72 * HOUR, HOUR // 4)
        end = start + rng.choice([0, HOUR // 2, HOUR, 3 * HOUR, 30 * HOUR, 200 * HOUR, 2000 * HOUR])
        milli = rng.choice([1000, 500, 250])
        # Now and then a share sits on another node's GPU, as after a migration.
        share_node = node if rng.random() < 0.9 else rng.choice(list(ledger.nodes.values()))
        gpus = rng.sample(share_node.gpu_ids, rng.randint(0, len(share_node.gpu_ids)))
        booking = Booking(id=booking_id, node_id=node.id, customer_id=rng.choice([1, 2, 3]),
                          gpu_model_id=node.gpu_model_id, start=start, end=end,
                          cpu_millicores=rng.choice([0, 1000, 4000]), memory_mib=rng.choice([0, 4096]),
                          gpu_milli_total=milli * len(gpus),
                          shares=tuple((gpu, milli, start, end) for gpu in gpus))
        ledger.put_booking(booking)
        bookings.append(booking)
    for booking in rng.sample(bookings, len(bookings) // 5):  # Released and deleted rows leave the indexes.
        ledger.drop_booking(booking.id)
        bookings.remove(booking)
    return ledger, bookings


def brute_free(node: FleetNode, bookings: list[Booking], start: int, end: int):
    on_node = [booking for booking in bookings if booking.node_id == node.id]
    cpu = node.cpu_millicores - brute_peak([(b.start, b.end, b.cpu_millicores) for b in on_node], start, end)
    memory = node.memory_mib - brute_peak([(b.start, b.end, b.memory_mib) for b in on_node], start, end)
    gpus = tuple((gpu, 1000 - brute_peak([(s_start, s_end, milli) for b in bookings
                                           for s_gpu, milli, s_start, s_end in b.shares if s_gpu == gpu], start, end))
                 for gpu in node.healthy_gpu_ids)
    return cpu, memory, gpus


@pytest.fixture(params=["python", "arrays"])
def measured_with(request, monkeypatch):
    """Measure windows with the Python loop, or with the NumPy arrays (``ledger_arrays``), whatever their size."""
    monkeypatch.setattr(ledger_module, "ARRAYS_FROM_BOOKINGS", 10**9 if request.param == "python" else 0)
    return request.param


@pytest.mark.parametrize("seed", range(150))
def test_shortlist_usage_match_brute_force(seed, measured_with):
    check_against_brute_force(seed)


@pytest.mark.parametrize("setting", ["LOOKUP_IDS_UP_TO", "SORT_KEY_LIMIT"])
@pytest.mark.parametrize("seed", range(20))
def test_array_fallbacks_match_brute_force(seed, setting, monkeypatch):
    """Ids found by binary search, and rows sorted by three keys instead of one, give the same results."""
    monkeypatch.setattr(ledger_module, "ARRAYS_FROM_BOOKINGS", 0)
    monkeypatch.setattr(ledger_arrays, setting, 0)
    check_against_brute_force(seed)


@pytest.mark.parametrize("seed", range(10))
def test_compacted_rows_same_shortlist(seed, monkeypatch):
    monkeypatch.setattr(ledger_module, "ARRAYS_FROM_BOOKINGS", 0)
    monkeypatch.setattr(ledger_arrays, "COMPACT_AFTER_DEAD_ROWS", 0)
    ledger, bookings = random_fleet(random.Random(seed))
    remaining = bookings[: len(bookings) // 4]
    rebuilt = []
    monkeypatch.setattr(ledger_module, "BookingRows",
                        lambda rows=(): rebuilt.append(True) or ledger_arrays.BookingRows(rows))
    for booking in bookings[len(bookings) // 4:]:
        ledger.drop_booking(booking.id)
    fresh = CapacityLedger()
    for node in ledger.nodes.values():
        fresh.put_node(node)
    for booking in remaining:
        fresh.put_booking(booking)
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=250, cpu_millicores=0, memory_mib=0)
    search = NodeSearch(gpu_model_ids=(1, 2))

    assert rebuilt or len(bookings) < 4
    for hour in range(0, 72, 6):
        assert (ledger.shortlist(request, hour * HOUR, (hour + 3) * HOUR, search, used_limit=8, free_limit=2)
                == fresh.shortlist(request, hour * HOUR, (hour + 3) * HOUR, search, used_limit=8, free_limit=2))


def check_against_brute_force(seed):
    rng = random.Random(seed)
    ledger, bookings = random_fleet(rng)
    start = rng.randrange(0, 60 * HOUR, HOUR // 4)
    end = start + rng.choice([HOUR // 4, HOUR, 5 * HOUR, 30 * HOUR, 300 * HOUR])
    request = PlacementRequest(gpu_count=rng.choice([0, 1, 2, 4]), gpu_milli_per_gpu=rng.choice([1000, 500, 250]),
                               cpu_millicores=rng.choice([0, 2000, 16000]), memory_mib=rng.choice([0, 8192]))
    search = NodeSearch(gpu_model_ids=rng.choice([(1,), (2,), (1, 2)]), region_id=rng.choice([None, 1]),
                        max_price_per_gpu_hour=rng.choice([None, Decimal("2.0")]))

    fitting = {}
    for node in ledger.nodes.values():
        if not search.admits(node) or node.in_maintenance(start, end):
            continue
        cpu, memory, gpus = brute_free(node, bookings, start, end)
        if (cpu >= request.cpu_millicores and memory >= request.memory_mib
                and sum(free >= request.gpu_milli_per_gpu for _gpu, free in gpus) >= request.gpu_count):
            fitting[node.id] = (cpu, memory, gpus)

    states = ledger.shortlist(request, start, end, search, used_limit=4, free_limit=2)

    fitting_states = [state for state in states if state.can_hold(request)]
    for state in fitting_states:
        assert state.node_id in fitting
        assert (state.cpu_free_millicores, state.memory_free_mib, state.gpu_free_milli) == fitting[state.node_id]
    assert bool(fitting_states) == bool(fitting)
    assert ledger.has_room(request, start, end, search) == bool(fitting)
    assert len({state.node_id for state in states}) == len(states)

    for customer_id in (1, 2, 3):
        rows = [b for b in bookings if b.customer_id == customer_id]
        by_model, total = ledger.customer_usage(customer_id, start, end)
        assert total == brute_peak([(b.start, b.end, b.gpu_milli_total) for b in rows], start, end)
        for model_id in (1, 2):
            expected = brute_peak([(b.start, b.end, b.gpu_milli_total) for b in rows if b.gpu_model_id == model_id],
                                  start, end)
            assert by_model.get(model_id, 0) == expected


def test_shortlist_order_tightest_then_smallest(measured_with):
    ledger = CapacityLedger()
    for node_id, gpu_count in ((1, 8), (2, 8), (3, 4), (4, 2)):
        gpus = tuple(range(node_id * 10, node_id * 10 + gpu_count))
        ledger.put_node(FleetNode(id=node_id, gpu_model_id=1, gpu_model_name="T4", region_id=1, hostname=f"n{node_id}",
                                  gpu_count=gpu_count, cpu_millicores=32000, memory_mib=65536,
                                  price_per_gpu_hour=Decimal("1"), currency="USD", active=True,
                                  healthy_gpu_ids=gpus, maintenance=(), gpu_ids=gpus))
    # Node 2 has more GPUs booked than node 1, so it is the tighter fit.
    ledger.put_booking(Booking(id=1, node_id=1, customer_id=1, gpu_model_id=1, start=0, end=HOUR, cpu_millicores=0,
                               memory_mib=0, gpu_milli_total=1000, shares=((10, 1000, 0, HOUR),)))
    ledger.put_booking(Booking(id=2, node_id=2, customer_id=1, gpu_model_id=1, start=0, end=HOUR, cpu_millicores=0,
                               memory_mib=0, gpu_milli_total=4000,
                               shares=tuple((gpu, 1000, 0, HOUR) for gpu in range(20, 24))))
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024)

    states = ledger.shortlist(request, 0, HOUR, NodeSearch(gpu_model_ids=(1,)), used_limit=24, free_limit=6)

    assert [state.node_id for state in states] == [2, 1, 4, 3]


def test_shortlist_follows_model_change(measured_with):
    ledger = CapacityLedger()
    node = FleetNode(id=1, gpu_model_id=1, gpu_model_name="T4", region_id=1, hostname="n1", gpu_count=1,
                     cpu_millicores=8000, memory_mib=8192, price_per_gpu_hour=Decimal("1"), currency="USD",
                     active=True, healthy_gpu_ids=(10,), maintenance=(), gpu_ids=(10,))
    ledger.put_node(node)
    ledger.put_booking(Booking(id=1, node_id=1, customer_id=1, gpu_model_id=1, start=0, end=HOUR, cpu_millicores=0,
                               memory_mib=0, gpu_milli_total=1000, shares=((10, 1000, 0, HOUR),)))
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0)

    ledger.put_node(replace(node, gpu_model_id=2))

    states = ledger.shortlist(request, 0, HOUR, NodeSearch(gpu_model_ids=(2,)), used_limit=4, free_limit=2)
    assert [state.gpu_free_milli for state in states] == [((10, 0),)]


def test_customer_usage_half_open_window():
    ledger = CapacityLedger()
    ledger.put_booking(Booking(id=1, node_id=1, customer_id=7, gpu_model_id=1, start=0, end=HOUR, cpu_millicores=0,
                               memory_mib=0, gpu_milli_total=1000, shares=()))

    assert ledger.customer_usage(7, HOUR, 2 * HOUR) == ({}, 0)
    assert ledger.customer_usage(7, HOUR - 1, 2 * HOUR) == ({1: 1000}, 1000)


@pytest.mark.parametrize("seed", range(30))
def test_peak_many_rows_brute_force(seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(rng.randint(2, 20)):
        start = rng.randrange(0, 20)
        rows.append((start, start + rng.randrange(0, 6), rng.choice([100, 250, 500])))

    assert peak(rows) == brute_peak(rows, -1, 30)


def test_peak_counts_back_to_back_rows_once():
    assert peak([(0, 10, 5), (10, 20, 7)]) == 7
    assert peak([(0, 10, 5), (5, 20, 7)]) == 12


def test_ended_bookings_are_dropped():
    ledger = CapacityLedger()
    for booking_id, end in ((1, HOUR), (2, 3 * HOUR), (3, 400 * HOUR)):
        ledger.put_booking(Booking(id=booking_id, node_id=1, customer_id=1, gpu_model_id=1, start=0, end=end,
                                   cpu_millicores=0, memory_mib=0, gpu_milli_total=0, shares=()))

    assert ledger.drop_bookings_ended_by(2 * HOUR) == 1
    assert sorted(b.id for b in ledger.bookings_in(0, 500 * HOUR)) == [2, 3]
