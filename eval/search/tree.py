"""Verifier-guided search over partial solutions, with no engine inside: the caller gives
``expand`` (the policy: new candidates, one step each) and ``value`` (the verifier: the reward
of each candidate's newest step).

Both methods grow N candidates per depth (after the first) and end with a pool of about N
finished ones:

- ``beam``: the root is expanded into N candidates; the best N/M unfinished ones by value are
  the beams, each expanded into M; repeat.
- ``dvts`` (diverse verifier tree search): the root is expanded into N/M first steps, each the
  root of its own subtree; each subtree is searched greedily on its own (one beam, expanded into
  M each depth), so the subtrees never compete with each other.

Finished candidates (the caller's ``finished``, read after ``value``; every candidate at
``max_steps``) leave the beams and join their subtree's pool, which holds at most N (beam) or M
(per DVTS subtree); a search (subtree) stops when its pool is full or it has no beam left. A beam
that ``expand`` cannot extend (no candidates for it) joins the pool as it is. When more finish
at one depth than the pool has room for, the best by value get in.

Ties are broken toward the earlier candidate, in the order ``expand`` returned them (children
of earlier beams first); beams and the pool keep that order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

METHODS = ("beam", "dvts")

C = TypeVar("C")
Expand = Callable[[list[C], int], Awaitable[list[list[C]]]]
"""``expand(parents, width)``: ``width`` new candidates per parent (fewer, or none, where the
parent cannot be extended), one list per parent."""
Value = Callable[[list[C]], Awaitable[list[float]]]
"""``value(candidates)``: the reward of each candidate's newest step, in order."""


@dataclass(frozen=True)
class Final(Generic[C]):
    """A candidate in the final pool: its subtree (0 for every beam-search candidate; the
    index of its first step for DVTS) and its value (the reward of its newest step)."""

    candidate: C
    subtree: int
    value: float


def check(method: str, n: int, width: int, max_steps: int) -> None:
    """ValueError unless the settings describe a search."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if n < 1 or width < 1 or max_steps < 1:
        raise ValueError("n, the beam width and the step limit must be at least 1")
    if n % width:
        raise ValueError(f"n ({n}) must be a multiple of the beam width ({width})")


@dataclass
class _Subtree(Generic[C]):
    target: int
    """Pool size at which the subtree stops."""
    keep: int
    """Beams kept per depth."""
    fresh: list[C]
    """Candidates of the current depth, not valued yet."""
    beams: list[tuple[C, float]] = field(default_factory=list)
    pool: list[tuple[C, float]] = field(default_factory=list)

    @property
    def room(self) -> int:
        return self.target - len(self.pool)

    def select(self, values: Sequence[float], last: bool) -> None:
        """Finished fresh candidates to the pool (the best, where room is short), the best
        ``keep`` unfinished ones to the beams; no beams once the pool is full."""
        scored = list(zip(self.fresh, values, strict=True))
        done = [pair for pair in scored if last or pair[0].finished]
        going = [pair for pair in scored if not (last or pair[0].finished)]
        self.pool += best(done, self.room)
        self.beams = best(going, self.keep) if self.room > 0 else []
        self.fresh = []


def best(scored: Sequence[tuple[C, float]], count: int) -> list[tuple[C, float]]:
    """The ``count`` highest-valued of ``scored``, ties to the earlier, in their given order.

    >>> best([("a", 0.5), ("b", 0.9), ("c", 0.5), ("d", 0.1)], 2)
    [('a', 0.5), ('b', 0.9)]
    >>> best([("a", 0.5)], 0)
    []
    """
    ranked = sorted(range(len(scored)), key=lambda i: (-scored[i][1], i))
    return [scored[i] for i in sorted(ranked[: max(count, 0)])]


async def search(
    root: C,
    expand: Expand,
    value: Value,
    *,
    method: str,
    n: int,
    width: int,
    max_steps: int,
) -> list[Final[C]]:
    """The final pool of a ``method`` search from ``root`` (see the module), subtree by
    subtree. All subtrees advance together: one ``expand`` and one ``value`` call per depth."""
    check(method, n, width, max_steps)
    if method == "beam":
        [firsts] = await expand([root], n)
        subtrees = [_Subtree(target=n, keep=n // width, fresh=list(firsts))]
    else:
        [firsts] = await expand([root], n // width)
        subtrees = [_Subtree(target=width, keep=1, fresh=[first]) for first in firsts]
    depth = 1
    while True:
        fresh = [candidate for subtree in subtrees for candidate in subtree.fresh]
        values = iter(await value(fresh) if fresh else [])
        for subtree in subtrees:
            subtree.select([next(values) for _ in subtree.fresh], last=depth >= max_steps)
        growing = [subtree for subtree in subtrees if subtree.beams]
        if not growing:
            break
        parents = [beam for subtree in growing for beam, _ in subtree.beams]
        children = iter(await expand(parents, width))
        for subtree in growing:
            for beam in subtree.beams:
                kids = next(children)
                if not kids and subtree.room > 0:
                    subtree.pool.append(beam)
                subtree.fresh += kids
        depth += 1
    return [
        Final(candidate, index, score)
        for index, subtree in enumerate(subtrees)
        for candidate, score in subtree.pool
    ]
