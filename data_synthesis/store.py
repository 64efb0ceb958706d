"""A stage's output files, written as records finish and resumed by id after any crash.

Beside ``OUTPUT`` (the records, JSONL) live:

- ``OUTPUT.done.jsonl``: one line per finished *input* record: its id, the ids it produced and
  dropped, and its stats. A line is written only once every record it names is whole in its
  file (a short write is retried; a full disk stops the run naming the file), so an input id in
  this ledger is finished; records no ledger line names (a kill between the two writes) are
  removed when the next run opens the file, and redone.
- ``OUTPUT.dropped.jsonl``: records a stage left out on purpose, each with ``drop_reason``.
- ``OUTPUT.settings.json``: what the output is written with; another run with other settings is
  refused instead of mixing two runs in one file.
- ``OUTPUT.lock``: held while a run writes the output; a second run on it is refused, naming the
  first (:func:`genprm.paths.output_lock`).

Each run checks the files against each other before it writes: the records are the truth, so a
ledger line whose records are missing (a deleted or hand-edited OUTPUT) is dropped and its input
redone, with a warning; a missing ledger beside records is refused (which input each record
finished and its stats are only in the ledger); a line that is not JSON is refused naming
``file:line``. Appends of whole lines to files opened with ``O_APPEND`` leave at most a torn
last line after a kill, which the next run cuts off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genprm.jsonl import InputError, dumps, input_lines, parse_line
from genprm.paths import cut_torn_line, output_lock, write_all, write_atomically
from genprm.runs import ResumeError

from .stage import StageResult

LOG = logging.getLogger(__name__)


def companion(output: Path, suffix: str) -> Path:
    """``solve.jsonl`` -> ``solve.jsonl.done.jsonl`` style names for the files beside OUTPUT."""
    return output.with_name(f"{output.name}.{suffix}")


class StageOutput:
    """Open (or continue) a stage's output, holding its lock until :meth:`close`;
    :attr:`done` maps finished input ids to stats."""

    def __init__(self, output: Path, settings: dict[str, Any]):
        self.output = output
        self.ledger = companion(output, "done.jsonl")
        self.dropped = companion(output, "dropped.jsonl")
        self.settings_path = companion(output, "settings.json")
        self._fds: dict[Path, int] = {}
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(output_lock(output))
        try:
            self._open(settings)
        except BaseException:
            self.close()
            raise

    def _open(self, settings: dict[str, Any]) -> None:
        self._check_settings(settings)
        for path in (self.output, self.ledger, self.dropped):
            cut_torn_line(path)
        stored = {path: _stored_ids(path) for path in (self.output, self.dropped)}
        if not self.ledger.exists() and (stored[self.output] or stored[self.dropped]):
            raise ResumeError(
                f"cannot resume {self.output}: its ledger {self.ledger} is missing, so which "
                "inputs its records finished is unknown; restore the ledger, or delete "
                f"{self.output} and {self.dropped} to redo the stage"
            )
        entries = self._check_ledger(stored)
        self.done = {entry["id"]: entry.get("stats") or {} for entry in entries}
        self._totals: dict[str, int | float] = {}
        for stats in self.done.values():
            _add(self._totals, stats)
        for path, key in ((self.output, "outputs"), (self.dropped, "dropped")):
            named = {record_id for entry in entries for record_id in entry.get(key) or []}
            _keep_only(path, stored[path], named)
        write_atomically(self.settings_path, (json.dumps(settings, indent=2) + "\n").encode())
        self._fds = {
            path: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for path in (self.ledger, self.output, self.dropped)
        }

    def _check_ledger(self, stored: dict[Path, list[str]]) -> list[dict[str, Any]]:
        """The ledger's entries whose records are all in the files; the ledger is rewritten
        without the others (their inputs are redone)."""
        present = {path: set(ids) for path, ids in stored.items()}
        kept, lost = [], []
        for number, line, entry in _stored_lines(self.ledger):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise ResumeError(f"{self.ledger}:{number}: not a ledger line{_RECOVER_LINE}")
            whole = all(
                set(entry.get(key) or []) <= present[path]
                for path, key in ((self.output, "outputs"), (self.dropped, "dropped"))
            )
            (kept if whole else lost).append((line, entry))
        if lost:
            LOG.warning(
                "%s names records of %d inputs that %s or %s lacks (first: id %r): redoing them",
                self.ledger,
                len(lost),
                self.output,
                self.dropped,
                lost[0][1]["id"],
            )
            write_atomically(self.ledger, b"".join(line for line, _ in kept))
        return [entry for _, entry in kept]

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
        """Record one finished input: its records, its dropped records, then its ledger line.
        A failed write raises ``OSError`` naming the file, before the ledger line."""
        for path, records in ((self.output, result.records), (self.dropped, result.dropped)):
            if records:
                write_all(self._fds[path], _jsonl(records), path)
        entry = {
            "id": input_id,
            "outputs": [record["id"] for record in result.records],
            "dropped": [record["id"] for record in result.dropped],
            "stats": result.stats,
        }
        write_all(self._fds[self.ledger], _jsonl([entry]), self.ledger)
        self.done[input_id] = result.stats
        _add(self._totals, result.stats)

    def totals(self) -> dict[str, int | float]:
        """The stats summed over every finished input, this run's and earlier runs'."""
        return dict(self._totals)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._lock.close()

    def __enter__(self) -> StageOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_records(
    path: Path, needs: tuple[str, ...] = ("id",), skip_invalid: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSONL file, and the errors of the lines skipped with ``skip_invalid``
    (without it the first bad line raises :class:`InputError` naming ``path:line``). A line is
    a JSON object in UTF-8 that UTF-8 can write back (no lone surrogate); it needs every key of
    ``needs`` (null is a value: a judge may have no verdict); ``id`` must be a string, unique in
    the file. A missing or unreadable ``path`` is an :class:`InputError` too."""
    records, errors, seen = [], [], {}
    for number, line in input_lines(path):
        record, problem = parse_line(line)
        if problem is None:
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


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(dumps(r) + "\n" for r in records).encode()


def _add(totals: dict[str, int | float], stats: dict[str, int | float]) -> None:
    for key, value in stats.items():
        totals[key] = totals.get(key, 0) + value


_RECOVER_LINE = (
    "; fix or delete that line (its input is then redone), or delete the stage's files to redo "
    "the stage"
)


def _stored_lines(path: Path) -> Iterator[tuple[int, bytes, Any]]:
    """``(line number, line, value)`` of every non-blank line of a file this module wrote
    (none when it does not exist); a line that is not JSON is a :class:`ResumeError`."""
    if not path.exists():
        return
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            value, problem = parse_line(line)
            if problem is not None:
                raise ResumeError(f"{path}:{number}: {problem}{_RECOVER_LINE}")
            yield number, line, value


def _stored_ids(path: Path) -> list[str]:
    """The id of each record in ``path``, in file order (None for a record without one)."""
    values = (value for _, _, value in _stored_lines(path))
    return [value.get("id") if isinstance(value, dict) else None for value in values]


def _keep_only(path: Path, stored: list[str], ids: set[str]) -> None:
    """Rewrite ``path`` (whose records have the ids ``stored``) without the records whose id
    is not in ``ids``: those of inputs no ledger line names, which are redone."""
    if all(record_id in ids for record_id in stored):
        return
    unnamed = sum(record_id not in ids for record_id in stored)
    LOG.warning("%s: removing %d records no ledger line names (redone)", path, unnamed)
    lines = [line for line in path.read_bytes().splitlines(keepends=True) if line.strip()]
    write_atomically(path, b"".join(line for line in lines if json.loads(line).get("id") in ids))
