"""gunicorn hooks for the *record-only* mix of `make bench-api`: a decision that reads no capacity.

In the workers they started, the express path skips the placement shortlist and answers every
request as ``no_capacity``, and the 409 carries no alternatives. What remains is what any
per-request decision in a web worker pays: authentication, validation, the admission context
and quota check, recording the rejected reservation with its event, workload and decision rows,
and the 409 body. Its rate bounds what placement tuning alone can reach. It is a measuring tool
only: ``bench.api`` starts a separate gunicorn with ``-c bench/record_only.py`` for this mix.
"""

NO_CAPACITY_DETAIL = "The record-only bench mix reads no capacity and places nothing."


def record_only_patches() -> list[tuple[object, str, object]]:
    """Return ``(module, attribute, replacement)`` for each function the record-only mix replaces."""
    import allocation.api.views as views
    import allocation.express as express
    from allocation.alternatives import Alternatives
    from allocation.placement import PlacementOutcome

    def no_shortlist(**_arguments):
        return [], {}

    def no_capacity(*_arguments, **_keywords):
        return PlacementOutcome(allocation=None, reason="no_capacity", detail=NO_CAPACITY_DETAIL)

    def no_alternatives(**_arguments):
        return Alternatives(earliest_start_at=None, options=[])

    return [
        (express, "placement_shortlist", no_shortlist),
        (express, "placement_diagnose", no_capacity),
        (views, "reservation_alternatives", no_alternatives),
    ]


def post_worker_init(worker) -> None:
    """gunicorn hook: apply the replacements in each worker once the application is loaded."""
    for module, attribute, replacement in record_only_patches():
        setattr(module, attribute, replacement)
    worker.log.info("Worker %s answers reservations record-only: no capacity is read", worker.pid)
