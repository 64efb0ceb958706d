"""The run's ``refine.jsonl`` in the output folder: one line per finished problem, read back to
resume a run (and refuse another run's folder) and for the report."""

from __future__ import annotations

import json
from pathlib import Path

from eval.commands import finished_ids

RESULTS = "refine.jsonl"


def start(out: Path, settings: dict) -> set[str]:
    """Prepare ``out`` for a run with ``settings``; the ids already in ``refine.jsonl`` (a torn
    last line, from a kill mid-write, is cut off). Another run's folder is refused."""
    return finished_ids(
        out, settings, RESULTS, lambda path: [line["id"] for line in read_lines(path)]
    )


def read_lines(path: Path) -> list[dict]:
    """The lines of a ``refine.jsonl``; a bad one is a ValueError naming file and line."""
    lines = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if (
                not isinstance(line, dict)
                or not isinstance(line.get("id"), str)
                or not line.get("turns")
            ):
                raise ValueError(f"{path}:{number}: not a refine line (id, answer, turns)")
            lines.append(line)
    return lines
