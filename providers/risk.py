"""The fitted failure risk of each node, from the marketplace's own health history.

Once a day ``failure_risk_fit`` builds one row per node and day of the last ``RISK_HISTORY_DAYS``:
the share of the node's GPUs that were not healthy at the day's start, the node's age in years,
and its provider; the outcome is whether any of its GPUs failed during the day. It fits the
statsmodels logistic regression of ``allocation.solvers.reliability`` on them and stores each
node's predicted risk for the next day in ``Node.failure_risk``, with the reason in words. With
too few failures in the history every node gets the overall rate, and the reason says so.
"""

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from allocation.solvers.reliability import NodeFeatures, ReliabilityModel
from marketplace.models import Gpu, GpuHealthEvent, Node

logger = logging.getLogger(__name__)

DAY = timedelta(days=1)


def failure_risk_fit(*, now: datetime | None = None) -> ReliabilityModel:
    """Fit the model on the health history, store every node's risk, and return the model."""
    now = now or timezone.now()
    days = settings.MARKETPLACE["RISK_HISTORY_DAYS"]
    first_day = (now - days * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
    nodes = list(Node.objects.select_related("provider"))
    gpu_nodes = dict(Gpu.objects.values_list("id", "node_id"))
    gpus_per_node: dict[int, int] = defaultdict(int)
    for node_id in gpu_nodes.values():
        gpus_per_node[node_id] += 1
    events = list(GpuHealthEvent.objects.filter(at__lt=now).order_by("at", "id")
                  .values_list("gpu_id", "node_id", "at", "to_state"))

    features, failed, index = [], [], 0
    state: dict[int, str] = {}
    day = first_day
    while day + DAY <= now:
        while index < len(events) and events[index][2] < day:
            state[events[index][0]] = events[index][3]
            index += 1
        failures_today = {node_id for _, node_id, at, to_state in events if day <= at < day + DAY
                          and to_state == "failed"}
        not_healthy = defaultdict(int)
        for gpu_id, gpu_state in state.items():
            if gpu_state != "healthy" and gpu_id in gpu_nodes:
                not_healthy[gpu_nodes[gpu_id]] += 1
        for node in nodes:
            if node.created_at > day + DAY or not gpus_per_node[node.pk]:
                continue
            features.append(_features(node, not_healthy[node.pk] / gpus_per_node[node.pk], day))
            failed.append(node.pk in failures_today)
        day += DAY

    if not features:
        logger.info("Failure risk not fitted: no node-days in the last %d days", days)
        return ReliabilityModel(status="prior", message="No history yet.")
    model = ReliabilityModel.fit(features, failed)
    current = defaultdict(int)
    for gpu_id, node_id, health in Gpu.objects.filter(retired_at__isnull=True).values_list("id", "node_id", "health"):
        current[node_id] += health != "healthy"
    risks = model.predict([_features(node, current[node.pk] / max(gpus_per_node[node.pk], 1), now) for node in nodes])
    for node, risk in zip(nodes, risks):
        Node.objects.filter(pk=node.pk).update(failure_risk=float(risk))
    logger.info("Failure risk %s on %d node-days with %d failures: %s", model.status, len(features), sum(failed),
                model.message)
    return model


def _features(node: Node, not_healthy_share: float, at: datetime) -> NodeFeatures:
    return NodeFeatures(degraded_share=not_healthy_share, age_years=max((at - node.created_at).days, 0) / 365.25,
                        provider=node.provider.slug)
