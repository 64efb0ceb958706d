"""One search run: every problem searched (:mod:`eval.search.solutions`), the final pools graded
and reported like Best-of-N, and the equal-budget Best-of-N beside it.

Files in the output folder: ``settings.json``; ``search.jsonl`` (one line per searched problem,
appended as it finishes: ``{"problem_id", "policy_tokens", "verifier_tokens", "seconds",
"samples"}``, the samples being the graded pool in Best-of-N's sample format); at the end
``samples.jsonl`` (every problem's pool), ``metrics.json``, ``report.md`` and ``bon_curve.png``.
With the comparison, ``bon/`` holds its Best-of-N samples (``samples.jsonl``: every one
generated; ``scores.jsonl``: those kept within the budget). A rerun resumes: searched problems,
generated Best-of-N problems and scored samples are skipped; other settings are refused.

The metrics are Best-of-N's over the final pool (:func:`eval.bon.aggregate.compute_metrics`): for
n below the pool size they are averages over subsets of the pool, not searches with a smaller N.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from eval.bon import runner as bon_runner
from eval.bon import samples as bon_samples
from eval.bon.aggregate import compute_metrics
from eval.bon.report import CURVE, METRICS, REPORT, columns, curve_png, markdown
from genprm.runs import appender, prepare, read_results, write_files

from .solutions import ProblemSearch, sample_record

SEARCH = "search.jsonl"
BON_DIR = "bon"


def start(out: Path, settings: dict) -> None:
    """Prepare ``out`` for a run with ``settings``; ResumeError when it holds searches done
    with other settings."""
    prepare(out, settings, (SEARCH,))


def searched(out: Path) -> dict[str, dict]:
    """The problems already searched in ``out``, by id (a torn last line is cut off first)."""
    return {record["problem_id"]: record for record in read_results(out / SEARCH)}


async def search_problems(
    problems: Sequence[dict],
    policy,
    verifier,
    grader,
    params,
    write: Callable[[bytes], None],
    *,
    method: str,
    n: int,
    width: int,
    max_steps: int,
    concurrency: int = 8,
    progress: Callable[[dict], None] = lambda record: None,
) -> None:
    """Search each problem (``concurrency`` in flight), grade its pool and ``write`` its line
    as it finishes."""
    bound = asyncio.Semaphore(concurrency)

    async def one(problem: dict) -> None:
        async with bound:
            started = time.monotonic()
            job = ProblemSearch(problem["problem"], policy, verifier, params)
            pool = await job.run(method, n, width, max_steps)
            samples = [sample_record(problem, index, final) for index, final in enumerate(pool)]
            await bon_samples.grade(samples, grader)
        record = {
            "problem_id": problem["id"],
            "policy_tokens": job.policy_tokens,
            "verifier_tokens": job.verifier_tokens,
            "seconds": round(time.monotonic() - started, 3),
            "samples": samples,
        }
        write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        progress(record)

    await asyncio.gather(*(one(problem) for problem in problems))


# --------------------------------------------------------------------- equal-budget Best-of-N


def within_budget(samples: Sequence[dict], budget: int) -> list[dict]:
    """The first of ``samples`` whose generated tokens add up to at most ``budget``; at least
    the first one (a problem needs a sample to be compared).

    >>> [s["id"] for s in within_budget([{"id": 0, "tokens": 5}, {"id": 1, "tokens": 4},
    ...                                  {"id": 2, "tokens": 1}], 9)]
    [0, 1]
    >>> [s["id"] for s in within_budget([{"id": 0, "tokens": 20}], 9)]
    [0]
    """
    kept, total = [], 0
    for sample in samples:
        total += sample["tokens"]
        if total > budget and kept:
            break
        kept.append(sample)
    return kept


def bon_kept(folder: Path, problems: Sequence[dict], budgets: dict, count: int):
    """The Best-of-N samples kept within each problem's budget, once all ``count`` samples of
    every problem are generated in ``folder``; None before."""
    generated = bon_samples.generated_problems(folder / bon_samples.SAMPLES, count)
    if any(problem["id"] not in generated for problem in problems):
        return None
    return [
        sample
        for problem in problems
        for sample in within_budget(generated[problem["id"]], budgets[problem["id"]])
    ]


async def compare_bon(
    folder: Path,
    problems: Sequence[dict],
    budgets: dict,
    count: int,
    policy,
    verifier,
    grader,
    params,
    concurrency: int = 64,
) -> list[dict]:
    """The equal-budget Best-of-N: ``count`` independent samples per problem generated (with
    Best-of-N's prompt and ``params``), the first ones within the problem's policy-token
    ``budget`` kept, and those scored; the kept samples with their step rewards."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    done = bon_samples.generated_problems(folder / bon_samples.SAMPLES, count)
    pending = [problem for problem in problems if problem["id"] not in done]
    if pending:
        bar = tqdm(total=len(pending) * count, unit="sample", desc="best-of-n", file=sys.stderr)
        await bon_samples.generate(
            policy, pending, params, grader, appender(folder / bon_samples.SAMPLES), bar.update,
            concurrency,
        )  # fmt: skip
        bar.close()
    kept = bon_kept(folder, problems, budgets, count)

    def scorer(samples, write, progress):
        return bon_runner.score_genprm(verifier, samples, write, progress)

    samples = await bon_runner.collect(
        folder, samples=kept, n=count, grader=grader, scorer=scorer, bars=True
    )
    return bon_runner.merge(samples, bon_runner.scored(folder))


# ----------------------------------------------------------------------------- the report


def last_row(metrics: dict) -> dict:
    """The metrics at the largest n (each problem's whole set of samples)."""
    row = {"n": metrics["n"][-1], "single_sample": metrics["single_sample"]}
    for key in ("pass_at_n", "majority"):
        row[key] = metrics[key][-1]
    for key in ("best_of_n", "weighted_majority"):
        row[key] = {how: values[-1] for how, values in metrics[key].items()}
    return row


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def finish(
    out: Path,
    records: Sequence[dict],
    settings: dict,
    title: str,
    subsets: int,
    seed: int,
    bon: Sequence[dict] | None = None,
) -> dict:
    """Write ``samples.jsonl`` (every pool, in problem order), the metrics and the report;
    the metrics. ``bon``: the equal-budget Best-of-N samples, compared in ``equal_budget``."""
    samples = [sample for record in records for sample in record["samples"]]
    bon_samples.write_samples(out / bon_samples.SAMPLES, samples)
    metrics = compute_metrics(
        [bon_runner.views(record["samples"]) for record in records], settings["n"], subsets, seed
    )
    metrics["policy_tokens_per_problem"] = _mean([r["policy_tokens"] for r in records])
    metrics["verifier_tokens_per_problem"] = _mean([r["verifier_tokens"] for r in records])
    notes = [f"{len(records)} problems, {len(samples)} final candidates"]
    finishes: dict[str, int] = {}
    for sample in samples:
        finishes[sample["finish"]] = finishes.get(sample["finish"], 0) + 1
    notes.append("candidates ended by " + ", ".join(f"{k}: {v}" for k, v in finishes.items()))
    empty = sum(not record["samples"] for record in records)
    if empty:
        notes.append(f"{empty} problems have no candidate (prompt too long): counted wrong")
    failed = sum(bool(sample.get("score_error")) for sample in samples)
    if failed:
        notes.append(f"{failed} candidates' last step could not be scored (ranked as reward 0)")
    section = ""
    if bon is not None:
        groups = bon_samples.by_problem(bon)
        bon_metrics = compute_metrics(
            [bon_runner.views(group) for group in groups], max(map(len, groups)), subsets, seed
        )
        metrics["equal_budget"] = {
            "search": {
                "samples_per_problem": _mean([len(r["samples"]) for r in records]),
                "policy_tokens_per_problem": metrics["policy_tokens_per_problem"],
                **last_row(metrics),
            },
            "bon": {
                "samples_per_problem": _mean([len(group) for group in groups]),
                "policy_tokens_per_problem": _mean(
                    [sum(sample["tokens"] for sample in group) for group in groups]
                ),
                **last_row(bon_metrics),
            },
        }
        section = equal_budget_markdown(metrics, bon_metrics, settings)
    report = markdown(metrics, settings, title, notes) + section
    contents = {
        METRICS: (json.dumps(metrics, indent=2) + "\n").encode(),
        REPORT: report.encode(),
        CURVE: curve_png(metrics, title),
    }
    write_files(out, contents)
    return metrics


def equal_budget_markdown(metrics: dict, bon_metrics: dict, settings: dict) -> str:
    """The report's comparison: the search's pool against Best-of-N's kept samples, each at
    its whole set per problem."""
    budget = metrics["equal_budget"]
    table = {name: values[-1] for name, values in columns(metrics).items()}
    bon_table = {name: values[-1] for name, values in columns(bon_metrics).items()}
    lines = [
        "",
        "## Equal policy-token budget",
        "",
        f"Best-of-N: of {settings['bon_samples']} independent samples per problem (Best-of-N's "
        "free-text prompt, at most max_steps x max_step_tokens tokens each), the first ones whose "
        "generated tokens add up to at most the search's policy tokens for that problem (at "
        "least one), scored by the same verifier. Accuracy (%) with every sample of a problem.",
        "",
        "| method | samples/problem | policy tokens/problem | " + " | ".join(table) + " |",
        "|---" * (len(table) + 3) + "|",
    ]
    for name, side, values in (
        (f"search ({settings['method']})", budget["search"], table),
        ("Best-of-N", budget["bon"], bon_table),
    ):
        cells = " | ".join(f"{value:.1f}" for value in values.values())
        lines.append(
            f"| {name} | {side['samples_per_problem']:.1f} | "
            f"{side['policy_tokens_per_problem']:.0f} | {cells} |"
        )
    lines.append(
        f"\nVerifier tokens per problem (search): {metrics['verifier_tokens_per_problem']:.0f}."
    )
    return "\n".join(lines) + "\n"
