"""Drive one stage over its input: this run's shard, minus what an earlier run finished, many
records in flight at once, each result written as it finishes (:mod:`data_synthesis.store`).

A record the stage rejects (:class:`StageError`) stops the run with its id, or is skipped and
counted with ``skip_invalid``. An engine failure stops the run; everything finished so far is
kept, and the same command resumes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from genprm.backends import EngineError

from .stage import Stage, StageError
from .store import StageOutput


class StageFailed(RuntimeError):
    """The run stopped; finished records are kept and a rerun resumes."""


@dataclass
class StageSummary:
    """What a stage's output holds after this run: ``totals`` sums the stats of every finished
    input (earlier runs' too); ``skipped`` names the inputs this run skipped as invalid."""

    stage: str
    output: Path
    inputs: int
    finished: int
    totals: dict[str, int | float]
    skipped: list[str] = field(default_factory=list)


def run_stage(
    stage: Stage,
    records: list[dict[str, Any]],
    output: Path,
    *,
    concurrency: int = 64,
    skip_invalid: bool = False,
    progress: bool = True,
) -> StageSummary:
    """Process ``records`` (already read, checked and sharded) into ``output``."""
    with StageOutput(output, stage.settings()) as out:
        pending = [record for record in records if record["id"] not in out.done]
        skipped: list[str] = []
        bar = tqdm(
            total=len(records),
            initial=len(records) - len(pending),
            desc=stage.name,
            unit="record",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            asyncio.run(_drive(stage, pending, out, concurrency, skip_invalid, skipped, bar))
        finally:
            bar.close()
        finished = sum(record["id"] in out.done for record in records)
        return StageSummary(stage.name, output, len(records), finished, out.totals(), skipped)


async def _drive(
    stage: Stage,
    pending: list[dict[str, Any]],
    out: StageOutput,
    concurrency: int,
    skip_invalid: bool,
    skipped: list[str],
    bar: tqdm,
) -> None:
    bound = asyncio.Semaphore(concurrency)

    async def one(record: dict[str, Any]) -> None:
        async with bound:
            try:
                result = await stage.process(record)
            except StageError as error:
                message = f"{stage.name}: record id={record['id']!r}: {error}"
                if not skip_invalid:
                    raise StageFailed(message + " (or pass --skip-invalid)") from None
                skipped.append(message)
                bar.update(1)
                return
            except EngineError as error:
                raise StageFailed(
                    f"{stage.name}: the engine failed on record id={record['id']!r}: {error}. "
                    f"{len(out.done)} finished records are kept in {out.output}; rerun the same "
                    "command to resume."
                ) from error
        out.write(record["id"], result)
        bar.update(1)
        bar.set_postfix(_postfix(out.totals()), refresh=False)

    tasks = [asyncio.ensure_future(one(record)) for record in pending]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _postfix(totals: dict[str, int | float]) -> dict[str, Any]:
    return {
        key: totals[key] for key in ("solutions", "rollouts", "tokens", "kept") if key in totals
    }
