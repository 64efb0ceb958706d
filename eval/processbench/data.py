"""The ProcessBench rows: ``{split}.jsonl`` files in a folder, or a Hugging Face dataset.

Every row is checked on loading; a bad one is refused with its place (``file:line``, or
``dataset[split][index]``) so that a broken download never turns into a silently wrong score.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from genprm.paths import data_dir

SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")
DEFAULT_DATA_DIR = data_dir() / "processbench"  # $GENPRM_DATA_DIR/processbench


@dataclass(frozen=True)
class Row:
    """One solution to judge: ``label`` is the 0-based index of its earliest wrong step, or -1
    when every step is correct."""

    id: str
    split: str
    problem: str
    steps: list[str]
    label: int


def load_splits(
    source: str | Path = DEFAULT_DATA_DIR,
    splits: Iterable[str] = SPLITS,
    limit: int | None = None,
) -> dict[str, list[Row]]:
    """The rows of each split in ``splits``, in file order; ``limit`` keeps the first N of each.

    ``source`` is a folder of ``{split}.jsonl`` files (where it holds some of the splits asked
    for, the others missing is an error), or else anything ``datasets.load_dataset`` reads: a
    Hugging Face dataset id or a folder in its layout. Ids must be unique across all the
    splits loaded, since predictions are matched to rows by id alone.
    """
    splits = list(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}; known: {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    folder = Path(source)
    if folder.is_dir() and any((folder / f"{split}.jsonl").exists() for split in splits):
        records = {split: jsonl_records(folder / f"{split}.jsonl") for split in splits}
    else:
        records = {split: _dataset_records(str(source), split) for split in splits}
    loaded: dict[str, list[Row]] = {}
    seen: dict[str, str] = {}  # id -> where it was first read
    for split, split_records in records.items():
        loaded[split] = []
        for where, record in itertools.islice(split_records, limit):
            row = _row(record, split, where)
            if row.id in seen:
                raise ValueError(f"{where}: id {row.id!r} was already used at {seen[row.id]}")
            seen[row.id] = where
            loaded[split].append(row)
    return loaded


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """``(FILE:LINE, parsed object)`` for each non-blank line; a line that is not JSON is a
    ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the other splits are in {path.parent})")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None


def _dataset_records(source: str, split: str) -> Iterator[tuple[str, object]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{source} is not a folder holding {split}.jsonl, and reading it as a Hugging Face "
            "dataset needs the `datasets` package, which is not installed"
        ) from None
    for index, record in enumerate(datasets.load_dataset(source, split=split)):
        yield f"{source}[{split}][{index}]", record


def _row(record: object, split: str, where: str) -> Row:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with id, problem, steps and label")
    row_id, problem, steps, label = (record.get(k) for k in ("id", "problem", "steps", "label"))
    if not isinstance(row_id, str) or not row_id:
        raise ValueError(f"{where}: `id` must be a non-empty string, got {row_id!r}")
    if not isinstance(problem, str):
        raise ValueError(f"{where}: `problem` must be a string, got {type(problem).__name__}")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: `steps` must be a non-empty list of strings")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise ValueError(
            f"{where}: `label` must be an integer from -1 to {len(steps) - 1} "
            f"(the row has {len(steps)} steps), got {label!r}"
        )
    return Row(id=row_id, split=split, problem=problem, steps=steps, label=label)
