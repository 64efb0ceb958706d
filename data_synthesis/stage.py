"""What every synthesis stage is to the driver (:mod:`data_synthesis.runner`).

A stage turns one input record into zero or more output records. The driver reads the input,
keeps this run's shard, skips the input ids a previous run finished, calls :meth:`Stage.process`
for the rest (many at once), writes each result as it finishes, and sums the stats.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


class StageError(ValueError):
    """A record this stage cannot process, with the reason (the driver adds file and line)."""


@dataclass
class StageResult:
    """One input record's outcome.

    ``records``: output records, each with a stable ``id``. ``stats``: numbers summed over the
    run for the summary and W&B (``{"solutions": 4, "invalid": 1, "tokens": 812}``).
    ``dropped``: records left out on purpose, each with a ``drop_reason``; they go to
    ``<output>.dropped.jsonl`` so that nothing is lost silently.
    """

    records: list[dict[str, Any]]
    stats: dict[str, int | float] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)


class Stage(ABC):
    """One stage. ``name`` is the stage's command and file name (``solve`` -> ``solve.jsonl``).
    ``needs``: the keys every input record must have (a missing one is a file:line error)."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ("id",)

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the output is written with (JSON values). A rerun with other settings is
        refused rather than mixing two runs in one file."""

    @abstractmethod
    async def process(self, record: dict[str, Any]) -> StageResult:
        """The outcome for one input record. Raise :class:`StageError` for a bad record."""
