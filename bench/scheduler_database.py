"""The scheduling cycle end to end on PostgreSQL: read the queue and the fleet, decide, write the decisions.

Run by ``bench.scheduler --database``. In a database of its own (``bench_scheduler``, dropped and
created again), it imports the trace fleet without the overlay's quotas, fills 85 % of its GPU milli with running reservations
of mixed priorities (written straight to the tables, checked by the database triggers), queues
``WAITING`` reservations drawn from the pod list, and times two calls of
``scheduler.cycle.scheduling_cycle``: the whole transaction, and the decisions alone. The
service places at most ``SCHEDULER_MAX_PLACEMENTS`` (200) reservations per cycle, each through
the reservation service's checks, so the second cycle places the next ones.
"""

import os
import random
import time
from datetime import timedelta
from decimal import Decimal

import psycopg

DATABASE = "bench_scheduler"
WAITING = 2000
RUNNING_SHARE = 0.85
PRIORITY_CLASSES = (("low", 0.4), ("standard", 0.45), ("high", 0.15))


def prepare(admin_url: str) -> str:
    """Create the benchmark's database again and return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        connection.execute(f"CREATE DATABASE {DATABASE}")
    return admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"


def run(admin_url: str, seed: int = 1) -> dict:
    """Set up the database, run two cycles and return their figures."""
    os.environ.update(DATABASE_URL=prepare(admin_url), REDIS_URL="", SECRET_KEY=os.environ.get("SECRET_KEY", "bench"),
                      APP_LOG_LEVEL="WARNING", LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    call_command("import_trace", verbosity=0)
    return _measure(seed)


def _measure(seed: int) -> dict:
    from django.utils import timezone

    from allocation.trace import TASKS_CSV
    from allocation.trace.csv_reader import read_tasks
    from marketplace.models import Organization
    from scheduler.cycle import scheduling_cycle

    generator = random.Random(seed)
    tasks = read_tasks(TASKS_CSV)
    customers = list(Organization.objects.filter(kind=Organization.Kind.CUSTOMER).order_by("id"))
    now = timezone.now()
    started = time.perf_counter()
    running = _fill(now, tasks, customers, generator)
    fill_seconds = time.perf_counter() - started
    _queue(now, tasks, customers, generator)

    cycles = []
    for _ in range(2):
        cycle = scheduling_cycle(now=timezone.now())
        cycles.append({"waiting": cycle.waiting, "placed": cycle.placed, "preemptions": cycle.preemptions,
                       "seconds": round(cycle.seconds, 3), "decide_seconds": round(cycle.decide_seconds, 3)})
    return {"running": running, "fill_seconds": round(fill_seconds, 1), "cycles": cycles}


def _fill(now, tasks, customers, generator: random.Random) -> int:
    """Write running reservations until ``RUNNING_SHARE`` of the GPU milli is taken; return how many."""
    from django.db import transaction

    from allocation.models import Allocation, GpuShare, Quota, Reservation, ReservationStatus
    from allocation.placement_policy import placement_policy
    from marketplace.models import Node
    from scheduler.cycle import fleet_capacity
    from scheduler.models import PriorityClass, Queue, Workload

    # The overlay's quotas would stop the fill well below 85 %; the cycle's own checks still run.
    Quota.objects.all().delete()
    fleet, _, _ = fleet_capacity()
    policy = placement_policy("best_fit")
    classes = {cls.name: cls for cls in PriorityClass.objects.all()}
    queue = Queue.objects.get(name="default")
    capacity, taken, count = int(fleet.gpu_free.sum()), 0, 0
    nodes = {node.id: node for node in Node.objects.all()}
    with transaction.atomic():
        while taken < RUNNING_SHARE * capacity:
            task = generator.choice(tasks)
            request = _request(task)
            rows = fleet.feasible(request)
            if rows.size == 0:
                break
            evaluation = policy.evaluate(fleet, None, request, rows)
            best = int(evaluation.scores.argmax())
            row, columns = int(evaluation.rows[best]), evaluation.columns[best]
            node = nodes[int(fleet.node_ids[row])]
            gpu_ids = [int(fleet.gpu_ids[row, column]) for column in columns]
            fleet.take(row, columns, request)
            taken += request.gpu_milli_total
            start = now - timedelta(hours=generator.uniform(0, 6))
            end = now + timedelta(hours=generator.uniform(1, 24))
            customer = generator.choice(customers)
            reservation = Reservation.objects.create(
                customer=customer, gpu_count=task.gpu_count, gpu_milli_per_gpu=task.gpu_milli,
                cpu_millicores=task.cpu_millicores, memory_mib=task.memory_mib, start_at=start, end_at=end,
                status=ReservationStatus.PENDING)
            Reservation.objects.filter(pk=reservation.pk).update(status=ReservationStatus.ACTIVE)
            name = _weighted(generator, (("low", 0.5), ("standard", 0.4), ("high", 0.1)))
            Workload.objects.create(reservation=reservation, priority_class=classes[name], queue=queue,
                                    interruptible=generator.random() < 1 / 3,
                                    duration_seconds=int((end - start).total_seconds()))
            allocation = Allocation.objects.create(
                reservation=reservation, customer=customer, node=node, gpu_model_id=node.gpu_model_id, start_at=start,
                end_at=end, cpu_millicores=task.cpu_millicores, memory_mib=task.memory_mib,
                gpu_milli_total=request.gpu_milli_total, billed_gpu_milli=request.gpu_milli_total,
                price_per_gpu_hour=node.price_per_gpu_hour, currency=node.currency)
            GpuShare.objects.bulk_create(GpuShare(allocation=allocation, gpu_id=gpu_id, gpu_milli=task.gpu_milli,
                                                  start_at=start, end_at=end) for gpu_id in gpu_ids)
            count += 1
    return count


def _queue(now, tasks, customers, generator: random.Random) -> None:
    """Write ``WAITING`` queued reservations with their workloads."""
    from django.db import transaction

    from allocation.models import Reservation, ReservationStatus
    from scheduler.models import PriorityClass, Queue, Workload

    classes = {cls.name: cls for cls in PriorityClass.objects.all()}
    queue = Queue.objects.get(name="default")
    with transaction.atomic():
        reservations = Reservation.objects.bulk_create(
            Reservation(customer=generator.choice(customers), gpu_count=task.gpu_count,
                        gpu_milli_per_gpu=task.gpu_milli, cpu_millicores=task.cpu_millicores,
                        memory_mib=task.memory_mib, start_at=now, end_at=now + timedelta(hours=generator.randint(1, 12)),
                        status=ReservationStatus.PENDING, max_price_per_gpu_hour=Decimal("1000"))
            for task in (generator.choice(tasks) for _ in range(WAITING))
        )
        Workload.objects.bulk_create(
            Workload(reservation=reservation, queue=queue,
                     priority_class=classes[_weighted(generator, PRIORITY_CLASSES)],
                     duration_seconds=int((reservation.end_at - reservation.start_at).total_seconds()),
                     latest_start_at=now + timedelta(days=7), queued_at=now)
            for reservation in reservations
        )
        Reservation.objects.filter(pk__in=[r.pk for r in reservations]).update(status=ReservationStatus.QUEUED)


def _request(task):
    from allocation.solvers.base import PlacementRequest

    return PlacementRequest(gpu_count=task.gpu_count, gpu_milli_per_gpu=task.gpu_milli,
                            cpu_millicores=task.cpu_millicores, memory_mib=task.memory_mib)


def _weighted(generator: random.Random, choices) -> str:
    names, weights = zip(*choices)
    return generator.choices(names, weights=weights)[0]
