"""gunicorn hooks for the ceiling mixes of `make bench-api`: reservation requests with parts of the decision left out.

``BENCH_CEILING`` in the server's environment names the mix; ``bench.api`` starts a separate
gunicorn with ``--config bench/ceilings.py`` for each. Its workers replace product functions
after loading the application:

- ``record_only``: the express path shortlists no node and rejects every request as ``no_capacity``,
  with no alternatives. What remains is what any decision made per request in a web worker pays:
  authentication, validation, the admission context, the capacity ledger's update and quota
  check, recording the rejected reservation with its event, workload and decision rows, and the
  409 body.
- ``validate_only``: the view gets an unsaved rejected reservation without calling the service,
  so no statement runs after authentication. What remains is the web tier of a reservation
  request, which a design that decides elsewhere (an allocator process) would still pay.

These are measuring tools only; the product never imports this module. It replaces
``gunicorn.conf.py`` for these servers, so it repeats that file's ``child_exit`` hook.
"""

import itertools
import os
import runpy
from pathlib import Path

child_exit = runpy.run_path(str(Path(__file__).resolve().parents[1] / "gunicorn.conf.py"))["child_exit"]
"""The web process's own hook, which gunicorn finds by name here."""

NO_CAPACITY_DETAIL = "The ceiling mixes of the bench read no capacity and place nothing."


def record_only_patches() -> list[tuple[object, str, object]]:
    """Return ``(module, attribute, replacement)`` for each function the record-only mix replaces."""
    import allocation.api.views as views
    import allocation.express as express
    from allocation.placement import PlacementOutcome

    def no_shortlist(*_ledger, **_arguments):
        return [], {}

    def no_capacity(*_arguments, **_keywords):
        return PlacementOutcome(allocation=None, reason="no_capacity", detail=NO_CAPACITY_DETAIL)

    return [
        (express, "placement_shortlist", no_shortlist),
        (express, "ledger_shortlist", no_shortlist),
        (express, "placement_diagnose", no_capacity),
        (views, "reservation_alternatives", _no_alternatives),
    ]


def validate_only_patches() -> list[tuple[object, str, object]]:
    """Return ``(module, attribute, replacement)`` for each function the validate-only mix replaces."""
    import allocation.api.views as views
    from allocation.express import _prefetched
    from allocation.models import Reservation, ReservationStatus
    from django.utils import timezone

    identifiers = itertools.count(1)

    def rejected_in_memory(*, customer, spec, actor):
        now = timezone.now()
        reservation = Reservation(
            id=next(identifiers), customer=customer, external_ref=spec.external_ref, gpu_count=spec.gpu_count,
            gpu_milli_per_gpu=spec.gpu_milli_per_gpu, cpu_millicores=spec.cpu_millicores,
            memory_mib=spec.memory_mib, start_at=spec.start_at, end_at=spec.end_at, currency="USD",
            status=ReservationStatus.REJECTED, reason_code="no_capacity", reason_detail=NO_CAPACITY_DETAIL,
            created_at=now, updated_at=now,
        )
        reservation._state.adding = False
        _prefetched(reservation, "gpu_models", reservation.gpu_models.all(), [])
        reservation._state.fields_cache["allocation"] = None  # Known to have none, so neither is read.
        reservation._state.fields_cache["workload"] = None
        reservation.response_ready = True
        return reservation

    return [
        (views, "reservation_create", rejected_in_memory),
        (views, "reservation_alternatives", _no_alternatives),
    ]


def _no_alternatives(**_arguments):
    from allocation.alternatives import Alternatives

    return Alternatives(earliest_start_at=None, options=[])


CEILINGS = {"record_only": record_only_patches, "validate_only": validate_only_patches}


def post_worker_init(worker) -> None:
    """gunicorn hook: apply the replacements of ``BENCH_CEILING`` in each worker once the application is loaded."""
    ceiling = os.environ.get("BENCH_CEILING", "")
    if ceiling not in CEILINGS:
        raise RuntimeError(f"BENCH_CEILING is {ceiling!r}; set it to one of {', '.join(CEILINGS)}.")
    for module, attribute, replacement in CEILINGS[ceiling]():
        setattr(module, attribute, replacement)
    worker.log.info("Worker %s handles reservations as the %s ceiling mix", worker.pid, ceiling)
