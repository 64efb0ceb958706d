"""One ProcessBench run: every row through a verifier (GenPRM or a critic LLM), one line per
finished solution appended to ``predictions.jsonl``, then the report.

A rerun of the same command resumes: the finished ids are skipped (a torn last line, from a
kill in the middle of a write, is cut off), and a run with other settings is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from eval.verifier_args import resume_flags
from genprm.paths import OutputBusy, claim_output, cut_torn_line, write_all, write_atomically

from .critic import critic_verdict
from .data import Row
from .metrics import read_predictions, score
from .report import write_report

PREDICTIONS = "predictions.jsonl"
SETTINGS = "settings.json"


class ResumeError(ValueError):
    """The output folder holds a run with other settings, or an unreadable one."""


def as_only_writer(args, run: Callable[[], int]) -> int:
    """``run()`` (an exit status) as the only writer of the output folder ``args.out``, which
    is checked and locked first (:func:`genprm.paths.claim_output`): before any engine starts,
    a folder that cannot be written or that another run holds is exit status 2. Then the
    embedded model's preset, where one applies (``args.preset``), is named, and the verifier
    flags that a resumed run settles take the folder's stored values
    (:func:`eval.verifier_args.resume_flags`)."""
    try:
        claim = claim_output(args.out, folder=True)
    except (OSError, ValueError, OutputBusy) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    with claim:
        if getattr(args, "preset", None):
            print(f"genprm-eval: {args.preset}", file=sys.stderr)
        resume_flags(args, stored_settings(args.out))
        return run()


def nothing_selected(source, limit: int | None) -> int:
    """Say that the selection from ``source`` is empty: exit status 0, nothing to do."""
    scope = f" with --limit {limit}" if limit is not None else ""
    print(f"genprm-eval: nothing selected from {source}{scope}; nothing to do", file=sys.stderr)
    return 0


def finished_ids(
    out: Path,
    settings: dict,
    results: str = PREDICTIONS,
    read_ids: Callable[[Path], Iterable[str]] = read_predictions,
) -> set[str]:
    """The ids already in ``out/<results>`` (read with ``read_ids``; a torn last line is cut
    off first), once :func:`check_settings` shows that it was written with ``settings``."""
    path = out / results
    if not path.exists() or path.stat().st_size == 0:
        return set()
    check_settings(out, settings)
    cut_torn_line(path)
    return set(read_ids(path))


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


def prediction_line(row: Row, prediction: int | None, **extra) -> bytes:
    record = {"id": row.id, "split": row.split, "label": row.label, "prediction": prediction}
    return (json.dumps({**record, **extra}, ensure_ascii=False) + "\n").encode()


async def run_genprm(verifier, rows: list[Row], write: Callable[[bytes], None], progress) -> None:
    """Score ``rows`` with a :class:`genprm.verifier.GenPRMVerifier`, all in flight at once.
    A line holds the step rewards, the turns and, in adaptive mode, the level that decided
    each step (``levels``)."""

    def finished(index: int, result) -> None:
        extra = {"step_rewards": result.rewards, "turns": result.turns}
        if result.levels is not None:
            extra["levels"] = result.levels
        if result.error is not None:
            extra["error"] = result.error
        write(prediction_line(rows[index], result.prediction, **extra))
        progress(len(result.rewards))

    items = [(row.problem, row.steps) for row in rows]
    await verifier.ascore_many(items, stop_at_first_error=True, on_result=finished)


async def run_critic(
    engine, rows: list[Row], write, progress, samples: int, max_tokens: int, concurrency: int
) -> None:
    """Score ``rows`` with the critic-LLM baseline (spec/processbench.md)."""
    bound = asyncio.Semaphore(concurrency)

    async def one(row: Row) -> None:
        async with bound:
            verdict = await critic_verdict(engine, row.problem, row.steps, samples, max_tokens)
        write(prediction_line(row, verdict.prediction, critiques=verdict.samples))
        progress(len(row.steps))

    await asyncio.gather(*(one(row) for row in rows))


async def score_rows(args, tools, rows: list[Row], write, progress) -> None:
    """``rows`` through the verifier the flags chose, on ``tools`` (a
    :class:`eval.verifier_args.VerifierTools`): here, or in a Ray actor."""
    if args.verifier == "critic":
        await run_critic(
            tools.engine, rows, write, progress,
            args.critic_samples, args.max_tokens, args.concurrency,
        )  # fmt: skip
    else:
        await run_genprm(tools.verifier, rows, write, progress)


class StepProgress:
    """A progress bar of scored solutions (or samples) that counts their steps: call it with
    each one's step count."""

    def __init__(self, total: int, unit: str, desc: str, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=disable)
        self.steps = 0

    def __call__(self, scored_steps: int) -> None:
        self.steps += scored_steps
        self.bar.update(1)
        self.bar.set_postfix(steps=self.steps)

    def close(self) -> None:
        self.bar.close()


def appender(path: Path) -> Callable[[bytes], None]:
    """Append whole lines with one write each, so that a kill leaves at most a torn last line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: bytes) -> None:
        write_all(fd, line, path)

    return write


def start(
    out: Path,
    settings: dict,
    results: str = PREDICTIONS,
    read_ids: Callable[[Path], Iterable[str]] = read_predictions,
) -> set[str]:
    """Prepare ``out`` for a run with ``settings``; the ids already finished there."""
    out.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out, settings, results, read_ids)
    write_settings(out, settings)
    return done


def finish(out: Path, rows: dict[str, list[Row]], settings: dict, title: str) -> dict:
    """Score ``out/predictions.jsonl`` against ``rows`` and write the report; the metrics."""
    predictions = read_predictions(out / PREDICTIONS)
    metrics = score(rows, predictions)
    failed = [
        line["id"]
        for line in map(json.loads, (out / PREDICTIONS).read_text(encoding="utf-8").splitlines())
        if line.get("error")
    ]
    notes = []
    if failed:
        notes.append(f"{len(failed)} solutions could not be scored (counted wrong): see `error`")
    write_report(out, metrics, rows, settings, title, notes)
    return metrics
