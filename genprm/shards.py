"""``--shard I/N``: every N-th input record from the I-th, so that N runs without coordination
partition an input."""

from __future__ import annotations

from typing import Any


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N.

    >>> parse_shard("1/4")
    (1, 4)
    """
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard {text}: I must be in 0..N-1")
    return shard


def in_shard(records: list[Any], shard: tuple[int, int] | None) -> list[Any]:
    """Every N-th record from position I: the N shards of a list partition it.

    >>> [in_shard(list("abcde"), (i, 2)) for i in range(2)]
    [['a', 'c', 'e'], ['b', 'd']]
    """
    if shard is None:
        return records
    index, count = shard
    return records[index::count]
