"""One score for a solution from its step rewards: how Best-of-N, the search's final pool and the
GRPO reward rank solutions."""

from __future__ import annotations

import math
from collections.abc import Sequence

AGGREGATIONS = ("last", "min", "mean", "product")


def aggregate(rewards: Sequence[float], how: str) -> float:
    """One sample's reward from its step rewards; 0.0 when it has none.

    >>> rewards = [0.9, 0.5, 0.8]
    >>> [round(aggregate(rewards, how), 6) for how in AGGREGATIONS]
    [0.8, 0.5, 0.733333, 0.36]
    >>> [aggregate([], how) for how in AGGREGATIONS]
    [0.0, 0.0, 0.0, 0.0]
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {how!r}")
    if not rewards:
        return 0.0
    if how == "last":
        return float(rewards[-1])
    if how == "min":
        return float(min(rewards))
    if how == "mean":
        return sum(rewards) / len(rewards)
    return math.prod(rewards)
