"""The learned reliability score: fitted on failure history, a prior when history is thin, a penalty in placement."""

import numpy as np
import pytest

from allocation.solvers import PlacementRequest
from allocation.solvers.fleet import Fleet
from allocation.solvers.online import BestFitPolicy
from allocation.solvers.reliability import NodeFeatures, ReliabilityModel, ReliabilityPenalty


def history(seed: int = 0, rows: int = 4000):
    random = np.random.default_rng(seed)
    features, failed = [], []
    for _ in range(rows):
        age = float(random.uniform(0, 5))
        provider = "bad" if random.random() < 0.3 else "good"
        logit = -4 + 0.5 * age + (1.5 if provider == "bad" else 0.0)
        features.append(NodeFeatures(0.0, age, provider))
        failed.append(bool(random.random() < 1 / (1 + np.exp(-logit))))
    return features, failed


def test_fit_learns_age_and_provider_risk():
    features, failed = history()

    model = ReliabilityModel.fit(features, failed)

    assert model.status == "fitted"
    young_good, old_good, young_bad = model.predict([
        NodeFeatures(0.0, 0.5, "good"), NodeFeatures(0.0, 4.5, "good"), NodeFeatures(0.0, 0.5, "bad"),
    ])
    assert old_good > 2 * young_good
    assert young_bad > 2 * young_good


def test_few_failures_give_every_node_the_overall_rate():
    features = [NodeFeatures(0.0, 1.0, "p")] * 100
    failed = [True] * 3 + [False] * 97

    model = ReliabilityModel.fit(features, failed)

    assert model.status == "prior"
    assert "needs at least 10" in model.message
    assert model.predict(features[:2]).tolist() == [0.03, 0.03]


def test_mismatched_history_is_refused():
    with pytest.raises(ValueError, match="one outcome per row"):
        ReliabilityModel.fit([NodeFeatures(0.0, 1.0, "p")], [])


def test_penalty_prefers_safer_node():
    fleet = Fleet.build(cpu=[64000, 64000], memory=[262144] * 2, gpu_count=[2, 2], models=["T4", "T4"],
                        node_ids=[1, 2])
    request = PlacementRequest(1, 1000, 1000, 1024)
    rows = np.array([0, 1])

    plain = BestFitPolicy().evaluate(fleet, None, request, rows)
    penalised = ReliabilityPenalty(BestFitPolicy(), {1: 0.2, 2: 0.01}).evaluate(fleet, None, request, rows)

    assert plain.scores[0] == plain.scores[1]
    assert penalised.scores[1] > penalised.scores[0]
    assert penalised.scores[0] == pytest.approx(plain.scores[0] - 20)


def test_missing_ages_are_refused_when_fitting():
    features = [NodeFeatures(0.0, float("nan"), "p")] + [NodeFeatures(0.0, 1.0, "p")] * 20

    with pytest.raises(ValueError, match="age_years values are missing"):
        ReliabilityModel.fit(features, [True] * 11 + [False] * 10)


def test_unknown_risk_counts_as_certain_failure():
    fleet = Fleet.build(cpu=[64000, 64000], memory=[262144] * 2, gpu_count=[2, 2], models=["T4", "T4"],
                        node_ids=[1, 2])
    request = PlacementRequest(1, 1000, 1000, 1024)

    penalised = ReliabilityPenalty(BestFitPolicy(), {1: float("nan"), 2: 0.5}).evaluate(
        fleet, None, request, np.array([0, 1]))

    assert penalised.scores[1] > penalised.scores[0]


def test_baseline_provider_coefficient_is_zero():
    features, failed = history()

    model = ReliabilityModel.fit(features, failed)

    assert model.coefficient("provider:bad") == 0.0  # "bad" sorts first, so it is the baseline
    assert model.coefficient("provider:good") < 0
