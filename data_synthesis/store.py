"""A stage's output files, written as records finish and resumed by id after any crash.

Beside ``OUTPUT`` (the records, JSONL) live:

- ``OUTPUT.done.jsonl``: one line per finished *input* record: its id, the ids it produced and
  dropped, and its stats. A line is written only after the records it names, so an input id in
  this ledger is finished; records no ledger line names (a kill between the two writes) are
  removed when the next run opens the file, and redone.
- ``OUTPUT.dropped.jsonl``: records a stage left out on purpose, each with ``drop_reason``.
- ``OUTPUT.settings.json``: what the output is written with; another run with other settings is
  refused instead of mixing two runs in one file.

Every write is one ``os.write`` of whole lines to a file opened with ``O_APPEND``, so a kill
leaves at most a torn last line, which the next run cuts off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genprm.paths import cut_torn_line, write_atomically

from .stage import StageResult


class ResumeError(ValueError):
    """The output exists and cannot be continued by this run."""


class InputError(ValueError):
    """An input line that is not a usable record (the message names file and line)."""


def companion(output: Path, suffix: str) -> Path:
    """``solve.jsonl`` -> ``solve.jsonl.done.jsonl`` style names for the files beside OUTPUT."""
    return output.with_name(f"{output.name}.{suffix}")


class StageOutput:
    """Open (or continue) a stage's output; :attr:`done` maps finished input ids to stats."""

    def __init__(self, output: Path, settings: dict[str, Any]):
        self.output = output
        self.ledger = companion(output, "done.jsonl")
        self.dropped = companion(output, "dropped.jsonl")
        self.settings_path = companion(output, "settings.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        self._check_settings(settings)
        for path in (self.output, self.ledger, self.dropped):
            cut_torn_line(path)
        self.done: dict[str, dict[str, Any]] = {}
        named: set[str] = set()
        for number, entry in _lines(self.ledger):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise ResumeError(f"{self.ledger}:{number}: not a ledger line")
            self.done[entry["id"]] = entry.get("stats") or {}
            named.update(entry.get("outputs") or [])
            named.update(entry.get("dropped") or [])
        for path in (self.output, self.dropped):
            _keep_only(path, named)
        write_atomically(self.settings_path, (json.dumps(settings, indent=2) + "\n").encode())
        self._fds = {
            path: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for path in (self.output, self.dropped, self.ledger)
        }

    def _check_settings(self, settings: dict[str, Any]) -> None:
        if not self.output.exists() or self.output.stat().st_size == 0:
            if not self.ledger.exists() or self.ledger.stat().st_size == 0:
                return
        try:
            recorded = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ResumeError(
                f"cannot resume {self.output}: no readable {self.settings_path.name} beside it "
                f"({type(error).__name__}); delete it or write to another output"
            ) from None
        keys = sorted(set(recorded) | set(settings))
        changed = [
            f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}"
            for key in keys
            if recorded.get(key) != settings.get(key)
        ]
        if changed:
            raise ResumeError(
                f"refusing to resume {self.output}: the settings changed ({'; '.join(changed)}); "
                "delete it or write to another output"
            )

    def write(self, input_id: str, result: StageResult) -> None:
        """Record one finished input: its records, its dropped records, then its ledger line."""
        if result.records:
            os.write(self._fds[self.output], _jsonl(result.records))
        if result.dropped:
            os.write(self._fds[self.dropped], _jsonl(result.dropped))
        entry = {
            "id": input_id,
            "outputs": [record["id"] for record in result.records],
            "dropped": [record["id"] for record in result.dropped],
            "stats": result.stats,
        }
        os.write(self._fds[self.ledger], _jsonl([entry]))
        self.done[input_id] = result.stats

    def totals(self) -> dict[str, int | float]:
        """The stats summed over every finished input, this run's and earlier runs'."""
        totals: dict[str, int | float] = {}
        for stats in self.done.values():
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> StageOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_records(
    path: Path, needs: tuple[str, ...] = ("id",), skip_invalid: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSONL file, and the errors of the lines skipped with ``skip_invalid``
    (without it the first bad line raises :class:`InputError` naming ``path:line``). A record
    needs every key of ``needs`` (null is a value: a judge may have no verdict); ``id`` must be
    a string, unique in the file."""
    records, errors, seen = [], [], {}
    try:
        lines = list(_lines(path, raw=True))
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problem = f"not JSON ({error.msg})"
        else:
            problem = _record_problem(record, needs, seen)
        if problem is None:
            seen[record["id"]] = number
            records.append(record)
            continue
        message = f"{path}:{number}: {problem}"
        if not skip_invalid:
            raise InputError(message + " (or pass --skip-invalid to skip such lines)")
        errors.append(message)
    return records, errors


def _record_problem(record: Any, needs: tuple[str, ...], seen: dict[str, int]) -> str | None:
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a JSON object"
    missing = [key for key in needs if key not in record]
    if missing:
        return f"missing {', '.join(repr(key) for key in missing)}"
    if "id" in needs:
        if not isinstance(record["id"], str):
            return f"id {record['id']!r} is not a string"
        if record["id"] in seen:
            return f"duplicate id {record['id']!r} (first on line {seen[record['id']]})"
    return None


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


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _lines(path: Path, raw: bool = False) -> Iterator[tuple[int, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, (line if raw else json.loads(line))


def _keep_only(path: Path, ids: set[str]) -> None:
    """Rewrite ``path`` without the records whose id is not in ``ids`` (unfinished inputs)."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("id") in ids]
    if len(kept) != len([line for line in lines if line.strip()]):
        write_atomically(path, b"".join(kept))
