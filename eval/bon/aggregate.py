"""Best-of-N arithmetic: selection, majority votes,
pass@n and the averaging over random subsets of n samples. Pure functions, no I/O.

A sample here is a dict with ``final_answer`` (str or None), ``correct`` (bool) and
``step_rewards`` (list of floats; empty for a sample with no paragraphs or that could not be
scored). Within a subset the samples keep their generation order (sample index): "earliest"
in a tie means the lowest index.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import combinations

from genprm.aggregate import AGGREGATIONS, aggregate

DEFAULT_SUBSETS = 32


def n_values(largest: int) -> list[int]:
    """The subset sizes reported: powers of two up to ``largest``, and ``largest`` itself.

    >>> n_values(1), n_values(8), n_values(12)
    ([1], [1, 2, 4, 8], [1, 2, 4, 8, 12])
    """
    if largest < 1:
        raise ValueError(f"N must be at least 1, got {largest}")
    sizes, size = [], 1
    while size <= largest:
        sizes.append(size)
        size *= 2
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


def answer_key(answer: str | None) -> str | None:
    """What majority votes group by: the extracted answer with all whitespace removed.

    >>> answer_key(" \\\\frac{1}{ 2} "), answer_key(None)
    ('\\\\frac{1}{2}', None)
    """
    return None if answer is None else "".join(answer.split())


def best_index(scores: Sequence[float]) -> int:
    """The position of the highest score; ties go to the earliest.

    >>> best_index([0.2, 0.7, 0.7, 0.1])
    1
    """
    if not scores:
        raise ValueError("no scores to choose from")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def vote(keys: Sequence[str | None], weights: Sequence[float] | None = None) -> int | None:
    """The position of the first sample of the winning answer group: groups by key (None, no
    answer, never votes), weighted by ``weights`` (1 each by default); ties go to the group
    whose first sample is earliest. None when no sample has an answer.

    >>> vote(["3", "4", "4", "3", None, None, None])
    0
    >>> vote(["3", "4", "4"]), vote([None, None])
    (1, None)
    >>> vote(["3", "4", "4"], weights=[0.9, 0.3, 0.5])
    0
    """
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key is None:
            continue
        first.setdefault(key, index)
        totals[key] = totals.get(key, 0.0) + (1.0 if weights is None else weights[index])
    if not totals:
        return None
    # dicts keep first-appearance order and max keeps the first of equal totals
    return first[max(totals, key=totals.__getitem__)]


def subsets(count: int, size: int, draws: int, rng: random.Random) -> list[tuple[int, ...]]:
    """The subsets of ``size`` of ``count`` samples to average over, each in index order:
    every combination when there are at most ``draws`` of them (so n = N is the one full set
    and small cases are exact expectations), else ``draws`` random ones, each drawn without
    replacement. ``size`` above ``count`` is cut to ``count``.

    >>> subsets(3, 2, 32, random.Random(0))
    [(0, 1), (0, 2), (1, 2)]
    >>> subsets(4, 4, 32, random.Random(0))
    [(0, 1, 2, 3)]
    >>> drawn = subsets(64, 4, 5, random.Random(0))
    >>> len(drawn), all(len(set(s)) == 4 and list(s) == sorted(s) for s in drawn)
    (5, True)
    """
    size = min(size, count)
    if math.comb(count, size) <= draws:
        return list(combinations(range(count), size))
    return [tuple(sorted(rng.sample(range(count), size))) for _ in range(draws)]


def subset_scores(samples: Sequence[dict], chosen: Sequence[int]) -> dict:
    """The outcome (1.0 right, 0.0 wrong) of every method on the samples at ``chosen``.

    >>> samples = [
    ...     {"final_answer": "4", "correct": False, "step_rewards": [0.9, 0.2]},
    ...     {"final_answer": "5", "correct": True, "step_rewards": [0.6, 0.7]},
    ...     {"final_answer": "4", "correct": False, "step_rewards": [0.05]},
    ... ]
    >>> result = subset_scores(samples, [0, 1, 2])
    >>> result["pass_at_n"], result["majority"], result["best_of_n"]
    (1.0, 0.0, {'last': 1.0, 'min': 1.0, 'mean': 1.0, 'product': 1.0})
    >>> result["weighted_majority"]
    {'last': 1.0, 'min': 1.0, 'mean': 1.0, 'product': 1.0}
    """
    picked = [samples[i] for i in chosen]
    correct = [bool(sample["correct"]) for sample in picked]
    keys = [answer_key(sample["final_answer"]) for sample in picked]
    winner = vote(keys)
    result = {
        "pass_at_n": float(any(correct)),
        "majority": float(winner is not None and correct[winner]),
        "best_of_n": {},
        "weighted_majority": {},
    }
    for how in AGGREGATIONS:
        rewards = [aggregate(sample["step_rewards"], how) for sample in picked]
        result["best_of_n"][how] = float(correct[best_index(rewards)])
        winner = vote(keys, rewards)
        result["weighted_majority"][how] = float(winner is not None and correct[winner])
    return result


def problem_scores(samples: Sequence[dict], size: int, draws: int, rng: random.Random) -> dict:
    """:func:`subset_scores` averaged over the :func:`subsets` of ``size`` of one problem."""
    chosen = subsets(len(samples), size, draws, rng)
    total = _zero()
    for subset in chosen:
        _add(total, subset_scores(samples, subset))
    return _scale(total, 1.0 / len(chosen))


def compute_metrics(
    problems: Sequence[Sequence[dict]],
    largest: int,
    draws: int = DEFAULT_SUBSETS,
    seed: int = 0,
) -> dict:
    """Accuracies in percent for every n of :func:`n_values` (``largest``): each problem's
    :func:`problem_scores`, averaged over problems. The random subsets of problem p and size n
    come from a generator seeded with ``(seed, p, n)``, so that they do not depend on which
    other sizes are computed. ``single_sample`` is the mean accuracy of one sample.

    >>> right = {"final_answer": "5", "correct": True, "step_rewards": [0.4]}
    >>> wrong = {"final_answer": "4", "correct": False, "step_rewards": [0.8]}
    >>> metrics = compute_metrics([[right, wrong]], 2)
    >>> metrics["n"], metrics["pass_at_n"], metrics["majority"], metrics["best_of_n"]["min"]
    ([1, 2], [50.0, 100.0], [50.0, 100.0], [50.0, 0.0])
    >>> metrics["single_sample"]
    50.0
    """
    if not problems or any(not samples for samples in problems):
        raise ValueError("every problem needs at least one sample")
    if draws < 1:
        raise ValueError(f"subsets must be at least 1, got {draws}")
    sizes = n_values(largest)
    per_n = []
    for size in sizes:
        total = _zero()
        for index, samples in enumerate(problems):
            rng = random.Random(f"{seed}:{index}:{size}")
            _add(total, problem_scores(samples, size, draws, rng))
        per_n.append(_scale(total, 100.0 / len(problems)))
    single = sum(
        sum(bool(sample["correct"]) for sample in samples) / len(samples) for samples in problems
    )
    return {
        "n": sizes,
        "pass_at_n": [m["pass_at_n"] for m in per_n],
        "majority": [m["majority"] for m in per_n],
        "best_of_n": {how: [m["best_of_n"][how] for m in per_n] for how in AGGREGATIONS},
        "weighted_majority": {
            how: [m["weighted_majority"][how] for m in per_n] for how in AGGREGATIONS
        },
        "single_sample": 100.0 * single / len(problems),
    }


def _zero() -> dict:
    return {
        "pass_at_n": 0.0,
        "majority": 0.0,
        "best_of_n": dict.fromkeys(AGGREGATIONS, 0.0),
        "weighted_majority": dict.fromkeys(AGGREGATIONS, 0.0),
    }


def _add(total: dict, part: dict) -> None:
    for key in ("pass_at_n", "majority"):
        total[key] += part[key]
    for key in ("best_of_n", "weighted_majority"):
        for how in AGGREGATIONS:
            total[key][how] += part[key][how]


def _scale(total: dict, factor: float) -> dict:
    return {
        key: {how: v * factor for how, v in value.items()}
        if isinstance(value, dict)
        else value * factor
        for key, value in total.items()
    }
