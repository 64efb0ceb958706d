"""One ProcessBench run: every row through a verifier (GenPRM or a critic LLM), one line per
finished solution appended to ``predictions.jsonl``, then the report.

A rerun of the same command resumes: the finished ids are skipped (a torn last line, from a
kill in the middle of a write, is cut off), and a run with other settings is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from eval.commands import finished_ids
from genprm.runs import read_results

from .critic import critic_verdict
from .data import Row
from .metrics import read_predictions, score
from .report import write_report

PREDICTIONS = "predictions.jsonl"


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


def start(out: Path, settings: dict) -> set[str]:
    """Prepare ``out`` for a ProcessBench run with ``settings``; the ids already in
    ``predictions.jsonl`` (a torn last line cut off first). Another run's folder is refused."""
    return finished_ids(out, settings, PREDICTIONS, read_predictions)


def finish(out: Path, rows: dict[str, list[Row]], settings: dict, title: str) -> dict:
    """Score ``out/predictions.jsonl`` against ``rows`` and write the report; the metrics."""
    predictions = read_predictions(out / PREDICTIONS)
    metrics = score(rows, predictions)
    failed = [line["id"] for line in read_results(out / PREDICTIONS) if line.get("error")]
    notes = []
    if failed:
        notes.append(f"{len(failed)} solutions could not be scored (counted wrong): see `error`")
    write_report(out, metrics, rows, settings, title, notes)
    return metrics
