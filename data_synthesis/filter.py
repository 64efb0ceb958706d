"""``filter``: the consensus filter (spec §5).

A solution is kept only when the judge's earliest wrong paragraph (the rationale stage's
``judge_first_error``) is the first step the Monte Carlo labels call wrong (``first_error``),
and when every rationale the exported conversation needs was parsed. Kept records pass through
unchanged; each dropped one carries a ``drop_reason`` (one of :data:`DROP_REASONS`) and a
``drop_detail`` saying what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genprm.format import FormatError, first_error_from_labels

from .stage import Stage, StageError, StageResult

NO_VERDICT = "no judge verdict"
DISAGREE = "judge and labels disagree"
MISSING_RATIONALE = "missing rationale"
DROP_REASONS = (NO_VERDICT, DISAGREE, MISSING_RATIONALE)
# The stats key counting each reason.
DROP_STATS = {
    NO_VERDICT: "dropped: no verdict",
    DISAGREE: "dropped: disagree",
    MISSING_RATIONALE: "dropped: missing rationale",
}


@dataclass(frozen=True)
class FilterSettings:
    """The consensus filter has no knobs: agreement is exact and every exported turn needs its
    rationale. The class is here so that every stage is built the same way."""


def needed_steps(first_error: int, steps: int) -> int:
    """How many steps the exported conversation judges: up to and including the first error.

    >>> needed_steps(1, 4), needed_steps(-1, 4)
    (2, 4)
    """
    return steps if first_error == -1 else first_error + 1


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(record: dict[str, Any]) -> None:
    labels, rationales = record["labels"], record["rationales"]
    if not isinstance(labels, list) or not labels:
        raise StageError("`labels` must be a non-empty list of 0/1 per step")
    try:
        expected = first_error_from_labels(labels)
    except FormatError as error:
        raise StageError(f"`labels`: {error}") from None
    if not _is_index(record["first_error"]) or record["first_error"] != expected:
        raise StageError(
            f"`first_error` is {record['first_error']!r} but `labels` {labels!r} say {expected}"
        )
    if not isinstance(rationales, list) or len(rationales) != len(labels):
        raise StageError("`rationales` must be a list with one entry (text or null) per step")
    for index, rationale in enumerate(rationales):
        if rationale is not None and not isinstance(rationale, str):
            raise StageError(f"rationales[{index}] is {type(rationale).__name__}, not text")
    judge = record["judge_first_error"]
    if judge is not None and not _is_index(judge):
        raise StageError(f"`judge_first_error` is {judge!r}, not an index or null")


def drop(record: dict[str, Any]) -> tuple[str, str] | None:
    """Why the filter leaves ``record`` out, as ``(reason, detail)``, or None to keep it."""
    judge, labelled = record["judge_first_error"], record["first_error"]
    if judge is None:
        return NO_VERDICT, f"judge_votes={record.get('judge_votes')!r}"
    if judge != labelled:
        return DISAGREE, f"judge_first_error={judge}, first_error={labelled}"
    needed = record["rationales"][: needed_steps(labelled, len(record["labels"]))]
    missing = [index for index, rationale in enumerate(needed) if rationale is None]
    if missing:
        return MISSING_RATIONALE, f"no rationale for steps {missing} (0-based)"
    return None


class FilterStage(Stage):
    """Keeps the solutions whose judge and labels agree on the first error."""

    name = "filter"
    needs = ("id", "labels", "first_error", "judge_first_error", "rationales")

    def __init__(self, settings: FilterSettings) -> None:
        self._settings = settings

    def settings(self) -> dict[str, Any]:
        return {}

    async def process(self, record: dict[str, Any]) -> StageResult:
        _checked(record)
        stats = {"kept": 0, "dropped": 0, **dict.fromkeys(DROP_STATS.values(), 0)}
        verdict = drop(record)
        if verdict is None:
            stats["kept"] = 1
            return StageResult(records=[record], stats=stats)
        reason, detail = verdict
        stats["dropped"] = stats[DROP_STATS[reason]] = 1
        return StageResult(
            records=[],
            stats=stats,
            dropped=[{**record, "drop_reason": reason, "drop_detail": detail}],
        )
