"""``label``: step labels from the rollout stage's Monte Carlo scores (spec §5).

Relative progress estimation (``rpe``, the paper's method): P_t = MC_t / MC_{t-1}, with
MC_{-1} the solution's from-scratch pass rate; a step is correct when P_t >= epsilon, and after
a step with MC 0 when its own MC is above 0. The ablations: ``hard`` (MC_t > 0) and ``diff``
(MC_t - MC_{t-1} >= threshold).

MC scores are fractions k/K of rollouts stored as floats, so the comparisons are made on the
exact fractions: 4/50 after 5/50 is a ratio of exactly 0.8, which floats compute as
0.7999999999999999.

>>> rpe_labels([0.08, 0.0, 0.5], mc_initial=0.1, epsilon=0.8)
[1, 0, 1]
>>> first_error([1, 0, 1])
1
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from genprm.format import first_error_from_labels

from .stage import Stage, StageError, StageResult

METHODS = ("rpe", "hard", "diff")
# Recovers k/K exactly from its float for any K below a thousand rollouts (and far beyond).
_MAX_DENOMINATOR = 1_000_000


@dataclass(frozen=True)
class LabelSettings:
    """How steps are labelled (the CLI's ``--method``, ``--epsilon``, ``--threshold``)."""

    method: str = "rpe"
    """``rpe`` (relative progress, the paper's), ``hard`` (MC > 0) or ``diff`` (MC change)."""
    epsilon: float = 0.8
    """``rpe`` only: the least ratio MC_t / MC_{t-1} of a correct step (spec §5: 0.8)."""
    threshold: float = 0.0
    """``diff`` only: the least change MC_t - MC_{t-1} of a correct step."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"label method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("epsilon", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be above 0, got {self.epsilon!r}")


@functools.lru_cache(maxsize=1 << 16)  # scores are k/K for a few K: few distinct values
def _exact(score: float) -> Fraction:
    """The fraction k/K of rollouts that the float ``score`` stands for."""
    return Fraction(score).limit_denominator(_MAX_DENOMINATOR)


def _setting(value: float) -> Fraction:
    """A setting as the user wrote it: ``0.8`` means 4/5, not the float nearest to it."""
    return Fraction(str(value))


def rpe_labels(mc: list[float], mc_initial: float, epsilon: float) -> list[int]:
    """Relative progress labels: 1 iff MC_t / MC_{t-1} >= epsilon (MC_{-1} = ``mc_initial``);
    after MC_{t-1} = 0, 1 iff MC_t > 0.

    >>> rpe_labels([0.08, 0.06], mc_initial=0.1, epsilon=0.8)  # 0.08 / 0.1 is exactly 0.8
    [1, 0]
    >>> rpe_labels([0.0, 0.0], mc_initial=0.0, epsilon=0.8)
    [0, 0]
    """
    labels, previous = [], mc_initial
    for score in mc:
        labels.append(_progressed(previous, score, epsilon))
        previous = score
    return labels


@functools.lru_cache(maxsize=1 << 16)  # few distinct (MC_{t-1}, MC_t) pairs, as for _exact
def _progressed(previous: float, score: float, epsilon: float) -> int:
    previous, score = _exact(previous), _exact(score)
    return int(score > 0 if previous == 0 else score / previous >= _setting(epsilon))


def hard_labels(mc: list[float]) -> list[int]:
    """Hard labels: 1 iff some rollout from the step reached the right answer.

    >>> hard_labels([0.5, 1 / 64, 0.0])
    [1, 1, 0]
    """
    return [int(_exact(score) > 0) for score in mc]


def diff_labels(mc: list[float], mc_initial: float, threshold: float) -> list[int]:
    """Difference labels: 1 iff MC_t - MC_{t-1} >= threshold (MC_{-1} = ``mc_initial``).

    Unlike ``rpe`` there is no rule for MC_{t-1} = 0: a step that keeps MC at 0 has a change
    of 0, which meets the default threshold 0.

    >>> diff_labels([0.3, 0.2, 0.0, 0.0], mc_initial=0.1, threshold=0.0)
    [1, 0, 0, 1]
    """
    bound, labels, previous = _setting(threshold), [], _exact(mc_initial)
    for score in map(_exact, mc):
        labels.append(int(score - previous >= bound))
        previous = score
    return labels


def first_error(labels: list[int]) -> int:
    """The 0-based index of the first step labelled 0, or -1 when every step is correct."""
    return first_error_from_labels(labels)


def _check_score(where: str, score: Any) -> None:
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise StageError(f"{where} is {score!r}, not a number")
    if not 0 <= score <= 1:
        raise StageError(f"{where} is {score!r}, outside [0, 1]")


def _checked(record: dict[str, Any]) -> tuple[list[float], float]:
    steps, mc = record["steps"], record["mc"]
    if not isinstance(steps, list) or not steps:
        raise StageError("`steps` must be a non-empty list")
    if not isinstance(mc, list) or len(mc) != len(steps):
        count = f"{len(mc)} scores" if isinstance(mc, list) else f"a {type(mc).__name__}"
        raise StageError(f"`mc` must have one score per step: {count} for {len(steps)} steps")
    if not all(type(score) in (int, float) and 0 <= score <= 1 for score in mc):
        for index, score in enumerate(mc):
            _check_score(f"mc[{index}]", score)
    _check_score("mc_initial", record["mc_initial"])
    return mc, record["mc_initial"]


class LabelStage(Stage):
    """Adds ``labels`` (0/1 per step), ``first_error`` (-1: none) and ``label_method``."""

    name = "label"
    needs = ("id", "steps", "mc", "mc_initial")

    def __init__(self, settings: LabelSettings) -> None:
        self._settings = settings

    def settings(self) -> dict[str, Any]:
        method = self._settings.method
        relevant = {"rpe": "epsilon", "diff": "threshold"}.get(method)
        if relevant is None:
            return {"method": method}
        return {"method": method, relevant: getattr(self._settings, relevant)}

    def labels(self, mc: list[float], mc_initial: float) -> list[int]:
        """The labels this stage's method gives a solution's scores."""
        method = self._settings.method
        if method == "rpe":
            return rpe_labels(mc, mc_initial, self._settings.epsilon)
        if method == "diff":
            return diff_labels(mc, mc_initial, self._settings.threshold)
        return hard_labels(mc)

    async def process(self, record: dict[str, Any]) -> StageResult:
        labels = self.labels(*_checked(record))
        error = first_error(labels)
        positive = sum(labels)
        return StageResult(
            records=[
                {
                    **record,
                    "labels": labels,
                    "first_error": error,
                    "label_method": self._settings.method,
                }
            ],
            stats={
                "solutions": 1,
                "steps": len(labels),
                "labels_positive": positive,
                "labels_negative": len(labels) - positive,
                "first_error_none": int(error == -1),
            },
        )
