"""The learned reliability score's effect on placement, on a simulated failure history of the trace fleet.

The marketplace has no failure history of its own yet, so this study simulates one. Each
node of the trace fleet gets an age (0 to 5 years), a share of degraded GPUs (none for nine
nodes in ten) and the overlay's provider. Its true weekly failure probability is a logistic
function of those, with a random effect per provider. Twenty-six weeks of failures are drawn;
``ReliabilityModel`` is fitted on them without seeing the true coefficients. Then the FGD
protocol's arrival order (seed 42) is placed by ``fgd_best_fit`` with and without
``ReliabilityPenalty``, and each run reports the unallocated GPU at 100 % arrived and the
expected share of the placed GPU milli on nodes that fail in the following week.
"""

import numpy as np

from allocation.solvers.online import policy_by_name
from allocation.solvers.reliability import NodeFeatures, ReliabilityModel, ReliabilityPenalty

HISTORY_WEEKS = 26
INTERCEPT, AGE_PER_YEAR, DEGRADED = -4.5, 0.35, 3.0
PROVIDER_EFFECT_SD = 0.8
WEIGHTS = (0.0, 1.0, 3.0, 10.0)
HALF_LOAD_PCT = 60


def simulated_fleet(seed: int, provider: np.ndarray):
    """Return each node's features and true weekly failure probability."""
    random = np.random.default_rng(seed)
    count = provider.size
    age = random.uniform(0, 5, count)
    degraded = np.where(random.random(count) < 0.1, random.choice([0.125, 0.25, 0.5], count), 0.0)
    effect = random.normal(0, PROVIDER_EFFECT_SD, int(provider.max()) + 1)
    truth = 1 / (1 + np.exp(-(INTERCEPT + AGE_PER_YEAR * age + DEGRADED * degraded + effect[provider])))
    features = [NodeFeatures(float(d), float(a), f"provider-{int(p)}") for d, a, p in zip(degraded, age, provider)]
    return features, truth


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the area under the ROC curve: the chance that a failed node scores above a healthy one."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def reliability_effect(seed: int = 42) -> dict:
    """Fit the model on a simulated history and compare placements with and without its penalty."""
    from bench.placement import arrival_order, load_tasks, priced_fleet, target_workload

    fleet, provider = priced_fleet()
    features, truth = simulated_fleet(seed, provider)
    random = np.random.default_rng(seed + 1)
    history_failed = (random.random((HISTORY_WEEKS, fleet.size)) < truth).ravel()
    model = ReliabilityModel.fit(features * HISTORY_WEEKS, history_failed)
    predicted = model.predict(features)
    next_week = random.random(fleet.size) < truth

    tasks = load_tasks()
    workload = target_workload(tasks)
    capacity = int(fleet.gpu_count.sum()) * 1000
    order = arrival_order(tasks, seed, capacity)
    rows = []
    for weight in WEIGHTS:
        policy = policy_by_name("fgd_best_fit", workload=workload)
        if weight:
            risk = {int(node_id): float(p) for node_id, p in zip(fleet.node_ids, predicted)}
            policy = ReliabilityPenalty(policy, risk, weight=weight)
        fleet_copy = fleet.copy()
        state = policy.prepare(fleet_copy)
        arrived = allocated = 0
        placed_on = np.zeros(fleet.size)
        hit_at_half = None
        for task in order:
            if hit_at_half is None and arrived >= HALF_LOAD_PCT / 100 * capacity:
                hit_at_half = 100 * float((placed_on * truth).sum() / placed_on.sum())
            if arrived >= capacity:
                break
            arrived += task.gpu_total
            candidates = fleet_copy.feasible(task.request)
            if candidates.size == 0:
                continue
            evaluation = policy.evaluate(fleet_copy, state, task.request, candidates)
            best = int(np.argmax(evaluation.scores))
            row = int(evaluation.rows[best])
            fleet_copy.take(row, evaluation.columns[best], task.request)
            policy.placed(state, row)
            allocated += task.gpu_total
            placed_on[row] += task.gpu_total
        rows.append({
            "weight": weight,
            "unallocated_pct_at_100": round(100 - 100 * allocated / capacity, 2),
            "expected_hit_pct": round(100 * float((placed_on * truth).sum() / placed_on.sum()), 3),
            "expected_hit_pct_at_half": round(hit_at_half, 3),
        })
    return {
        "status": model.status, "message": model.message, "auc_next_week": round(auc(predicted, next_week), 3),
        "mean_predicted": round(float(predicted.mean()), 4), "mean_true": round(float(truth.mean()), 4),
        "age_coefficient": round(model.coefficient("age_years"), 3) if model.status == "fitted" else None,
        "rows": rows,
    }


def render_reliability(effect: dict) -> str:
    lines = [
        "### Learned reliability score",
        "",
        "A simulated study, because the marketplace has no failure history yet (`bench/reliability.py`): true weekly "
        f"failure probabilities from node age, degraded GPUs and a provider effect (mean {effect['mean_true']:.2%}), "
        f"{HISTORY_WEEKS} weeks of drawn failures, and `ReliabilityModel` fitted on them "
        f"(status `{effect['status']}`. {effect['message']} Mean predicted {effect['mean_predicted']:.2%}; age coefficient "
        f"{effect['age_coefficient']} against the true {AGE_PER_YEAR}; ROC AUC on the next week's failures "
        f"{effect['auc_next_week']:.3f}). The FGD protocol's seed-42 arrival order is then placed by `fgd_best_fit`, "
        "whose scores lose *weight* points per percentage point of predicted failure probability.",
        "",
        f"| weight | unallocated at 100 % | placed GPU on nodes that fail next week, at {HALF_LOAD_PCT} % arrived "
        "| the same at 100 % arrived |",
        "|---:|---:|---:|---:|",
    ]
    for row in effect["rows"]:
        lines.append(f"| {row['weight']:g} | {row['unallocated_pct_at_100']:.2f} % | {row['expected_hit_pct_at_half']:.3f} % "
                     f"| {row['expected_hit_pct']:.3f} % |")
    lines += ["", "Expected shares: the placed GPU milli on each node times its true failure probability. Near "
              "saturation every node is used whatever the weight, so the score matters most below it."]
    return "\n".join(lines)
