"""``genprm-convert``: step-labelled records to direct-mode GenPRM training conversations.

Input: JSONL in the ProcessBench / PRM800K style, one record per line with ``problem``,
``steps`` (list of paragraphs) and either ``label`` (index of the first wrong step, or -1) or
``labels`` (one 0/1 per step), and optionally ``id`` (a record without one, or with
``"id": null``, is named ``{file stem}-{line}``; ids must be unique). Output: JSONL rows
``{"id", "conversations"}`` that
``type: genprm_train.prompt_strategy`` trains on. Each conversation judges the steps up to and
including the first wrong one (SYSTEM_DIRECT, judgement-only assistant turns). An existing
output is replaced whole (the summary line says so); the input itself, also through a link, is
refused as the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from genprm.format import parse_turn
from genprm.jsonl import InputError, not_utf8, unencodable
from genprm.paths import write_atomically
from genprm.records import RecordError, describe, record_messages

_LABEL_KEYS = ("label", "labels")


class UsageError(ValueError):
    """Arguments that cannot work together (the output is the input)."""


def convert(source: Path, target: Path) -> dict[str, int]:
    """Convert ``source`` into ``target`` (written atomically); returns counts."""
    rows, yes, no = [], 0, 0
    seen: dict[str, str] = {}  # id -> where it was first used
    with source.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{source}:{number}"
            record = _parse(line, where)
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected an object with problem, steps and label(s)")
            if not any(record.get(k) is not None for k in _LABEL_KEYS):
                raise InputError(f"{where}: {describe(record)}: has no `label` or `labels`")
            step_record = {key: record.get(key) for key in ("id", "problem", "steps", *_LABEL_KEYS)}
            try:
                messages = record_messages(step_record)
            except RecordError as error:
                raise InputError(f"{where}: {error}") from None
            judgements = [
                parse_turn(m["content"]).judgement for m in messages if m["role"] == "assistant"
            ]
            yes, no = yes + judgements.count(True), no + judgements.count(False)
            record_id = _record_id(record.get("id"), f"{source.stem}-{number}", where)
            if record_id in seen:
                raise InputError(f"{where}: id {record_id!r} was already used at {seen[record_id]}")
            seen[record_id] = where
            rows.append({"id": record_id, "conversations": messages})
    write_atomically(
        target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    )
    return {"conversations": len(rows), "yes_turns": yes, "no_turns": no}


def _parse(line: bytes, where: str):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{where}: {not_utf8(error)}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error.msg})") from None
    problem = unencodable(text, record)
    if problem:
        raise InputError(f"{where}: {problem}")
    return record


def check_target(source: Path, target: Path) -> bool:
    """Whether ``target`` exists (and will be replaced); refuses a ``target`` that is
    ``source`` itself, also through a link."""
    try:
        target_stat = os.stat(target)
    except FileNotFoundError:
        return False
    source_stat = os.stat(source)
    if (source_stat.st_dev, source_stat.st_ino) == (target_stat.st_dev, target_stat.st_ino):
        raise UsageError(f"the output {target} is the input {source}; write to another file")
    return True


def _record_id(given, derived: str, where: str) -> str:
    """A record's own id (a string or an integer), or ``derived`` (file stem and line number)
    when it has none; ids must stay unique, so they are checked by the caller."""
    if given is None:
        return derived
    if isinstance(given, bool) or not isinstance(given, (str, int)) or given == "":
        raise InputError(f"{where}: `id` must be a non-empty string or an integer, got {given!r}")
    return str(given)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="genprm-convert",
        description="Turn step-labelled records (problem, steps, first-error label) into "
        "direct-mode GenPRM training conversations.",
    )
    parser.add_argument("input", type=Path, help="JSONL with problem, steps and label or labels")
    parser.add_argument("output", type=Path, help="JSONL of {id, conversations} to train on")
    args = parser.parse_args(argv)
    if not args.input.is_file() or not os.access(args.input, os.R_OK):
        print(f"genprm-convert: {args.input}: no such readable file", file=sys.stderr)
        return 2
    try:
        replacing = check_target(args.input, args.output)
        counts = convert(args.input, args.output)
    except (UsageError, InputError) as error:
        print(f"genprm-convert: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"genprm-convert: {error}", file=sys.stderr)
        return 1
    replaced = f" (replaced the previous {args.output})" if replacing else ""
    print(
        f"wrote {counts['conversations']} conversations ({counts['yes_turns']} Yes turns, "
        f"{counts['no_turns']} No turns) to {args.output}{replaced}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
