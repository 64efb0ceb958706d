"""Math problems with reference answers, from JSONL, parquet, a saved HF dataset or a hub id,
as ``{"id", "problem", "answer"}`` records: what synthesis (its ``solve`` stage), evaluation
(bon, refine, search) and GRPO training read.

GSM8K (``question``; ``answer`` ends in ``#### 18``) and MATH-500 (``problem``, ``answer``) work
with the default fields. Ids are taken from ``id_field`` when given, else made from the source's
name and the row's position (``gsm8k-test-0``, ``gsm8k-test-1``, ...), stable across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grading import extract_boxed
from .jsonl import InputError, check_readable, input_lines, parse_line

GSM8K_MARK = "#### "
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class ProblemFields:
    """Where a source row keeps its parts.

    problem_field: the problem text; None tries ``problem`` then ``question``.
    answer_field: the reference answer: a plain answer, a GSM8K solution ending in
        ``#### ANSWER`` (the part after the mark is used), or a text with ``\\boxed{...}``.
    id_field: a unique id per row; None makes ``<source name>-<row index>``.
    split: the split to read from a saved HF dataset dict or a hub id.
    """

    problem_field: str | None = None
    answer_field: str = "answer"
    id_field: str | None = None
    split: str = "train"


def reference_answer(text: str) -> str:
    """The reference answer in a source's answer field.

    >>> reference_answer("She makes 9 * 2 = $18.\\n#### 18")
    '18'
    >>> reference_answer(r"so \\boxed{\\frac{1}{2}}"), reference_answer(" 3 ")
    ('\\\\frac{1}{2}', '3')
    """
    if GSM8K_MARK in text:
        return text.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")
    boxed = extract_boxed(text)
    return boxed if boxed is not None else text.strip()


def load_problems(
    source: str, fields: ProblemFields = ProblemFields(), limit: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """``(records, errors)``: the first ``limit`` usable rows of ``source``, and a
    ``file:row: reason`` message for each unusable one (the caller decides whether to stop)."""
    check_source(source)
    path = Path(source)
    name = _source_name(source, path, fields.split)
    records, errors, seen = [], [], set()
    for index, (where, row) in enumerate(_rows(source, path, fields.split)):
        if limit is not None and len(records) >= limit:
            break
        try:
            if isinstance(row, InputError):
                raise row
            record = _record(row, index, name, fields)
        except InputError as error:
            errors.append(f"{where}: {error}")
            continue
        if record["id"] in seen:
            errors.append(f"{where}: duplicate id {record['id']!r}")
            continue
        seen.add(record["id"])
        records.append(record)
    return records, errors


def check_source(source: str) -> None:
    """Refuse a source that names a local file that is missing or unreadable
    (:class:`InputError`); anything else is a folder or a hub id, checked when loaded."""
    path = Path(source)
    if path.is_dir():
        return
    if path.exists() or path.suffix in FILE_SUFFIXES:
        check_readable(path)


def _source_name(source: str, path: Path, split: str) -> str:
    """``gsm8k-test`` for ``.../gsm8k/test.jsonl``; ``math500-train`` for a folder or hub id."""
    if path.is_file():
        return f"{path.resolve().parent.name}-{path.name.split('.')[0]}"
    return f"{source.rstrip('/').rsplit('/', 1)[-1]}-{split}"


def _record(row: Any, index: int, name: str, fields: ProblemFields) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise InputError(f"a {type(row).__name__}, not a JSON object")
    keys = [fields.problem_field] if fields.problem_field else ["problem", "question"]
    problem = next((row[key] for key in keys if isinstance(row.get(key), str)), None)
    if problem is None or not problem.strip():
        raise InputError(f"no problem text in {' or '.join(map(repr, keys))}")
    answer = row.get(fields.answer_field)
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not reference_answer(answer):
        raise InputError(f"no reference answer in {fields.answer_field!r}")
    if fields.id_field:
        if row.get(fields.id_field) is None:
            raise InputError(f"no id in {fields.id_field!r}")
        record_id = str(row[fields.id_field])
    else:
        record_id = f"{name}-{index}"
    return {"id": record_id, "problem": problem, "answer": reference_answer(answer)}


def _rows(source: str, path: Path, split: str):
    """``(where, row)`` pairs; ``row`` is an InputError for a line that is not JSON or UTF-8."""
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(path)
        return
    import datasets

    datasets.disable_progress_bars()
    if path.is_file() and path.suffix == ".parquet":
        rows = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir() and any(
        (path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")
    ):
        rows = datasets.load_from_disk(str(path))
        rows = rows[split] if isinstance(rows, datasets.DatasetDict) else rows
    elif path.exists():
        raise InputError(
            f"{source}: expected a .jsonl or .parquet file, a saved HF dataset, or a hub id"
        )
    else:
        try:
            rows = datasets.load_dataset(source, split=split)
        except Exception as error:  # noqa: BLE001 - datasets raises many kinds here
            raise InputError(
                f"{source}: no such file or folder, and not loadable as a hub dataset id "
                f"({type(error).__name__}: {error})"
            ) from None
    for index, row in enumerate(rows):
        yield f"{source}: row {index}", row


def _jsonl_rows(path: Path):
    for number, line in input_lines(path):
        row, problem = parse_line(line)
        yield f"{path}:{number}", row if problem is None else InputError(problem)
