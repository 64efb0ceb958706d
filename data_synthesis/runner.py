"""Drive one stage over its input: this run's shard, minus what an earlier run finished, many
records in flight at once, each result written as it finishes (:mod:`data_synthesis.store`).

A record the stage rejects (:class:`StageError`) stops the run with its id, or is skipped and
counted with ``skip_invalid``. An engine failure, or a write that fails (a full disk), stops the
run; everything finished so far is kept, and the same command resumes. With ``--executor ray``
the records are processed by Ray actors (:mod:`genprm.cluster`) and written here, the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from genprm.backends import EngineError
from genprm.cluster import RayPool

from .stage import Stage, StageError, StageResult
from .store import StageOutput


class StageFailed(RuntimeError):
    """The run stopped; finished records are kept and a rerun resumes."""


@dataclass
class StageSummary:
    """What a stage's output holds after this run: ``totals`` sums the stats of every finished
    input (earlier runs' too); ``skipped`` names the inputs this run skipped as invalid;
    ``note`` says why there was nothing to do (an input without records)."""

    stage: str
    output: Path
    inputs: int
    finished: int
    totals: dict[str, int | float]
    skipped: list[str] = field(default_factory=list)
    note: str | None = None


def run_stage(
    stage: Stage,
    records: list[dict[str, Any]],
    output: Path,
    *,
    concurrency: int = 64,
    skip_invalid: bool = False,
    progress: bool = True,
    pool: RayPool | None = None,
) -> StageSummary:
    """Process ``records`` (already read, checked and sharded) into ``output``: here, or with
    ``pool`` on Ray actors, which build the same stage from their tools
    (:class:`data_synthesis.pipeline.SynthTools`) and send each finished shard back to be
    written here."""
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

        def accept(outcome: Outcome) -> None:
            if outcome.error is not None:
                message = f"{stage.name}: record id={outcome.id!r}: {outcome.error}"
                if not skip_invalid:
                    raise StageFailed(message + " (or pass --skip-invalid)")
                skipped.append(message)
            else:
                try:
                    out.write(outcome.id, outcome.result)
                except OSError as error:
                    raise StageFailed(
                        f"{stage.name}: {error}. {len(out.done)} finished records are kept in "
                        f"{out.output}; fix that and rerun the same command to resume."
                    ) from None
                if progress:
                    bar.set_postfix(_postfix(out.totals()), refresh=False)
            bar.update(1)

        try:
            if pool is None:
                asyncio.run(process_records(stage, pending, concurrency, accept))
            elif pending:
                job = partial(process_shard, stage.name, output, concurrency)
                pool.map(job, pending, partial(_each, accept), key=_problem)
        except EngineError as error:
            raise StageFailed(
                f"{stage.name}: {error}. {len(out.done)} finished records are kept in "
                f"{out.output}; rerun the same command to resume."
            ) from error
        finally:
            bar.close()
        finished = sum(record["id"] in out.done for record in records)
        return StageSummary(stage.name, output, len(records), finished, out.totals(), skipped)


@dataclass
class Outcome:
    """One input record's result, or the reason the stage rejected it."""

    id: str
    result: StageResult | None = None
    error: str | None = None


async def process_records(
    stage: Stage,
    records: list[dict[str, Any]],
    concurrency: int,
    on_outcome: Callable[[Outcome], None],
) -> None:
    """``stage.process`` on every record, ``concurrency`` at once, started in input order,
    ``on_outcome`` as each finishes. An engine failure stops it, naming the record."""
    queue = iter(records)

    # ``concurrency`` workers sharing one iterator: no task per record, so the cost per record
    # stays the same however many there are
    async def worker() -> None:
        for record in queue:
            try:
                outcome = Outcome(record["id"], result=await stage.process(record))
            except StageError as error:
                outcome = Outcome(record["id"], error=str(error))
            except EngineError as error:
                raise EngineError(
                    f"the engine failed on record id={record['id']!r}: {error}"
                ) from error
            on_outcome(outcome)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(records)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def process_shard(
    name: str, output: Path, concurrency: int, tools, records: list[dict[str, Any]]
) -> list[Outcome]:
    """A Ray actor's job: the outcomes of ``records`` through ``tools``' stage ``name``."""
    outcomes: list[Outcome] = []
    await process_records(tools.stage(name, output), records, concurrency, outcomes.append)
    return outcomes


def _each(accept: Callable[[Outcome], None], outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        accept(outcome)


def _problem(record: dict[str, Any]) -> str:
    """Shards keep a problem's solutions together: the rollout stage computes MC(s_0) once
    per problem, in the actor that holds them."""
    return record.get("problem_id") or record["id"]


def _postfix(totals: dict[str, int | float]) -> dict[str, Any]:
    return {
        key: totals[key] for key in ("solutions", "rollouts", "tokens", "kept") if key in totals
    }
