"""A learned reliability score: the probability that a node fails in the next period, from its history.

``ReliabilityModel.fit`` fits a logistic regression (statsmodels ``Logit``) of "the node failed
during the period" on features known at the period's start: the share of its GPUs reported
degraded, its age in years, and its provider. A light L2 penalty keeps a provider with no
failures yet from an infinite coefficient. With too few failures or no variation the model falls
back to the overall failure rate, and ``status`` reads "prior".

``ReliabilityPenalty`` wraps an online policy: each node's score loses ``weight`` points per
percentage point of failure probability, in the wrapped policy's own score unit, so risky nodes
win only when they are much better placements.
"""

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .base import PlacementRequest
from .fleet import Fleet
from .online import Evaluation, OnlinePolicy

logger = logging.getLogger(__name__)

MIN_FAILURES = 10
"""Failures needed before the regression is fitted; fewer give the overall rate for every node."""
L2_ALPHA = 1e-4
"""Ridge penalty per observation (statsmodels ``fit_regularized``), small enough to leave real effects intact."""


@dataclass(frozen=True)
class NodeFeatures:
    """A node's features at the start of a period."""

    degraded_share: float
    age_years: float
    provider: str


@dataclass
class ReliabilityModel:
    """Failure probability per period from ``NodeFeatures``; ``status`` is "fitted" or "prior"."""

    providers: tuple[str, ...] = ()
    columns: tuple[int, ...] = ()
    """Design columns kept in the fit: the intercept and every feature that varies in the history."""
    coefficients: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prior: float = 0.0
    status: str = "prior"
    message: str = ""

    @classmethod
    def fit(cls, features: Sequence[NodeFeatures], failed: Sequence[bool]) -> "ReliabilityModel":
        """Fit on one row per node and period; raise ``ValueError`` when the two lengths differ or are 0."""
        if len(features) != len(failed) or not features:
            raise ValueError(f"Got {len(features)} feature rows and {len(failed)} outcomes; pass one outcome per row.")
        for name in ("degraded_share", "age_years"):
            if not np.isfinite([getattr(row, name) for row in features]).all():
                raise ValueError(f"Some {name} values are missing or not finite; fill or drop those rows first.")
        outcome = np.asarray(failed, dtype=float)
        prior = float(outcome.mean())
        if outcome.sum() < MIN_FAILURES or outcome.sum() == len(outcome):
            message = (f"{int(outcome.sum())} failures in {len(outcome)} node-periods; the regression needs at least "
                       f"{MIN_FAILURES} and some nodes without one, so every node gets the overall rate {prior:.4f}.")
            logger.info("Reliability model falls back to the prior: %s", message)
            return cls(prior=prior, status="prior", message=message)

        providers = tuple(sorted({row.provider for row in features}))
        full = cls(providers=providers)._full_design(features)
        columns = (0, *(index for index in range(1, full.shape[1]) if np.ptp(full[:, index]) > 0))
        import statsmodels.api as sm

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter from the optimizer; the fit is checked below
                result = sm.Logit(outcome, full[:, columns]).fit_regularized(alpha=L2_ALPHA, L1_wt=0.0, disp=False)
            coefficients = np.asarray(result.params, dtype=float)
        except (np.linalg.LinAlgError, ValueError) as error:
            coefficients = np.array([np.nan])
            logger.warning("Reliability regression failed: %s: %s", type(error).__name__, error)
        if not np.isfinite(coefficients).all():
            message = "The regression did not converge to finite coefficients; every node gets the overall rate."
            logger.warning("Reliability model falls back to the prior: %s", message)
            return cls(prior=prior, status="prior", message=message)
        message = f"Fitted on {len(outcome)} node-periods with {int(outcome.sum())} failures."
        logger.info("Reliability model fitted: %s", message)
        return cls(providers=providers, columns=columns, coefficients=coefficients, prior=prior, status="fitted",
                   message=message)

    def coefficient(self, name: str) -> float:
        """Return the fitted coefficient of "degraded_share", "age_years" or "provider:<name>".

        0 for a feature left out of the fit and for the first provider, which is the baseline.
        """
        names = ["intercept", "degraded_share", "age_years", *(f"provider:{p}" for p in self.providers[1:])]
        if name not in names:
            return 0.0
        position = names.index(name)
        return float(self.coefficients[self.columns.index(position)]) if position in self.columns else 0.0

    def _full_design(self, features: Sequence[NodeFeatures]) -> np.ndarray:
        """Return every design column: intercept, degraded share, age, and one per provider but the first."""
        columns = [np.ones(len(features)), [row.degraded_share for row in features], [row.age_years for row in features]]
        for provider in self.providers[1:]:
            columns.append([1.0 if row.provider == provider else 0.0 for row in features])
        return np.column_stack(columns)

    def predict(self, features: Sequence[NodeFeatures]) -> np.ndarray:
        """Return each node's failure probability for the next period; an unseen provider counts as the first one."""
        if self.status != "fitted":
            return np.full(len(features), self.prior)
        logits = self._full_design(features)[:, self.columns] @ self.coefficients
        probability = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        # A node with a missing feature gets the overall rate rather than NaN.
        return np.where(np.isfinite(probability), probability, self.prior)


class ReliabilityPenalty(OnlinePolicy):
    """An online policy whose scores lose ``weight`` points per percentage point of failure probability.

    ``failure_probability`` maps node ids to probabilities; nodes not in it count as 0.
    ``unit`` is one point of the wrapped policy's score (1000 for ``fgd_best_fit``, 1 for the others).
    """

    def __init__(self, policy: OnlinePolicy, failure_probability: dict[int, float], *, weight: float = 1.0):
        self.policy = policy
        self.failure_probability = failure_probability
        self.weight = weight
        self.name = f"{policy.name}+reliability"
        self.integer_scores = policy.integer_scores
        self.normalizes = policy.normalizes
        self.unit = 1000.0 if policy.name == "fgd_best_fit" else 1.0

    def prepare(self, fleet: Fleet) -> Any:
        return self.policy.prepare(fleet)

    def placed(self, state: Any, row: int) -> None:
        self.policy.placed(state, row)

    def evaluate(self, fleet: Fleet, state: Any, request: PlacementRequest, rows: np.ndarray) -> Evaluation:
        evaluation = self.policy.evaluate(fleet, state, request, rows)
        risk = np.array([self.failure_probability.get(int(node_id), 0.0) for node_id in fleet.node_ids[rows]])
        risk = np.where(np.isfinite(risk), risk, 1.0)  # an unknown risk counts as certain failure
        penalty = self.weight * 100 * risk * self.unit
        return Evaluation(evaluation.rows, evaluation.scores - penalty, evaluation.columns)
