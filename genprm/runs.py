"""A resumable run's output folder, the way every command keeps one: ``settings.json`` written
at the start and checked on a rerun, results appended a whole line per write (a kill leaves at
most a torn last line), read back with that line cut off, and the report files replaced
atomically.

A rerun with the same settings continues where the last one stopped; one with other settings
is refused (:class:`ResumeError`) unless the changed keys only shape the report (``free``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .paths import cut_torn_line, write_all, write_atomically

SETTINGS = "settings.json"


class ResumeError(ValueError):
    """The output holds work done with other settings, or that cannot be read back."""


def stored_settings(out: Path) -> dict:
    """The settings ``out/settings.json`` records; ``{}`` when there is none to read (a new
    run; :func:`check_settings` refuses an unreadable one where work is stored)."""
    try:
        recorded = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def check_settings(out: Path, settings: dict, free: Iterable[str] = ()) -> None:
    """ResumeError unless ``out/settings.json`` records ``settings`` (a key missing on one
    side counts as None); the keys in ``free`` may differ. For a folder that holds work."""
    try:
        recorded = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResumeError(
            f"cannot resume {out}: no readable {SETTINGS} ({type(error).__name__}); "
            "delete the folder or choose another --out"
        ) from None
    free = set(free)
    changed = [
        f"{k} {recorded.get(k)!r} -> {settings.get(k)!r}"
        for k in {**recorded, **settings}
        if k not in free and recorded.get(k) != settings.get(k)
    ]
    if changed:
        raise ResumeError(
            f"refusing to resume {out}: the settings changed ({', '.join(changed)}); "
            "delete the folder or choose another --out"
        )


def write_settings(out: Path, settings: dict) -> None:
    """``out/settings.json`` (atomically): what :func:`check_settings` checks on a rerun."""
    write_atomically(out / SETTINGS, (json.dumps(settings, indent=2) + "\n").encode())


def prepare(out: Path, settings: dict, results: Iterable[str], free: Iterable[str] = ()) -> None:
    """Make ``out`` ready for a run with ``settings``: where any of the ``results`` files
    holds work, the stored settings must match (:func:`check_settings`); then they are
    written."""
    out.mkdir(parents=True, exist_ok=True)
    if any(_holds_work(out / name) for name in results):
        check_settings(out, settings, free)
    write_settings(out, settings)


def _holds_work(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def appender(path: Path) -> Callable[[bytes], None]:
    """Append whole lines with one write each, so that a kill leaves at most a torn last line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: bytes) -> None:
        write_all(fd, line, path)

    return write


def read_results(path: Path) -> list[dict]:
    """The records of the results file ``path`` in file order, a torn last line cut off first
    (a missing file holds none). A line that is not a JSON object is a :class:`ResumeError`
    naming ``path:line``."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(cut_torn_line(path).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ResumeError(f"{path}:{number}: not JSON ({error}); {_RECOVER}") from None
        if not isinstance(record, dict):
            raise ResumeError(f"{path}:{number}: not a JSON object; {_RECOVER}")
        records.append(record)
    return records


_RECOVER = "delete the line (it is redone) or the folder"


def write_files(out: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    """Write each of ``contents`` (file name: bytes) into ``out`` atomically, so that a report
    is the old one or the new one, never half of each; their paths by file name."""
    paths = {}
    for name, data in contents.items():
        paths[name] = Path(out) / name
        write_atomically(paths[name], data)
    return paths


@contextlib.contextmanager
def wandb_run(project: str, settings: dict, out: Path) -> Iterator:
    """A W&B run in ``project`` with ``settings`` as its config and its files under ``out``,
    finished however the block ends."""
    import wandb

    run = wandb.init(project=project, config=settings, dir=str(out))
    try:
        yield run
    finally:
        run.finish()
