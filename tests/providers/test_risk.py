"""The failure-risk fit on the marketplace's own health history."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.models import Gpu, GpuHealthEvent, Node
from providers.risk import failure_risk_fit

from ..factories import NodeFactory

pytestmark = pytest.mark.django_db


def test_nodes_with_unhealthy_gpus_get_a_higher_risk(region):
    now = timezone.now()
    generator = random.Random(3)
    nodes = [NodeFactory(hostname=f"n{index}", gpu_count=2, region=region) for index in range(30)]
    Node.objects.update(created_at=now - timedelta(days=60))
    weak = nodes[:10]
    for node in weak:
        gpu = node.gpus.first()
        GpuHealthEvent.objects.create(gpu=gpu, node=node, at=now - timedelta(days=29, hours=23), from_state="healthy",
                                      to_state="degraded")
        Gpu.objects.filter(pk=gpu.pk).update(health="degraded")
    for day in range(1, 29):
        for node in nodes:
            chance = 0.5 if node in weak else 0.03
            if generator.random() < chance:
                gpu = node.gpus.last()
                GpuHealthEvent.objects.create(gpu=gpu, node=node, at=now - timedelta(days=day, hours=-1),
                                              from_state="healthy", to_state="failed")
                GpuHealthEvent.objects.create(gpu=gpu, node=node, at=now - timedelta(days=day, hours=-2),
                                              from_state="failed", to_state="healthy")

    model = failure_risk_fit(now=now)

    assert model.status == "fitted"
    assert model.coefficient("degraded_share") > 0
    risks = dict(Node.objects.values_list("hostname", "failure_risk"))
    assert risks["n0"] > 3 * risks["n20"]


def test_without_failures_every_node_gets_the_overall_rate(t4_node):
    Node.objects.update(created_at=timezone.now() - timedelta(days=10))

    model = failure_risk_fit()

    assert model.status == "prior"
    t4_node.refresh_from_db()
    assert t4_node.failure_risk == 0.0
