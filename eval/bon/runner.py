"""One Best-of-N run: policy samples (generated, or read with ``--samples``), every step of
every sample scored once (GenPRM verifier or the critic baseline), then the metrics for every n
and every aggregation from those scores, and the report.

Files in the output folder: ``settings.json``; ``samples.jsonl`` (appended per problem while
generating; rewritten at the end with ``step_rewards`` merged); ``scores.jsonl`` (one
``{"id", "step_rewards"}`` line per scored sample, appended as samples finish, with the
``levels`` that decided its steps in adaptive mode); the report
(``metrics.json``, ``report.md``, ``bon_curve.png``). A rerun of the same command resumes:
complete problems are not generated again and scored ids are skipped; a run with other
settings is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from eval.commands import StepProgress, as_only_writer, nothing_selected
from eval.processbench.critic import critic_verdict
from eval.verifier_args import VerifierTools, verifier_settings
from genprm.backends.types import EngineError
from genprm.runs import appender, prepare, read_results, wandb_run

from . import samples as bon_samples
from .aggregate import compute_metrics
from .report import CURVE, REPORT, text_table, write_report
from .samples import SAMPLES

SCORES = "scores.jsonl"
DEFAULT_N = 8
FREE_SETTINGS = ("subsets",)
"""Settings that only change the report, not stored work: a rerun may change them."""


def start(out: Path, settings: dict) -> None:
    """Prepare ``out`` for a run with ``settings``; ResumeError when it holds work done with
    other settings."""
    prepare(out, settings, (SAMPLES, SCORES), FREE_SETTINGS)


def scored(out: Path) -> dict[str, dict]:
    """The score lines already in ``out/scores.jsonl``, by sample id (a torn last line is
    cut off first)."""
    return {record["id"]: record for record in read_results(out / SCORES)}


def to_score(samples: Sequence[dict], done: dict[str, dict]) -> list[dict]:
    """The samples that still need scores: those with steps and no score line."""
    return [sample for sample in samples if sample["steps"] and sample["id"] not in done]


def score_line(
    sample_id: str,
    rewards: list[float],
    error: str | None = None,
    levels: list[str] | None = None,
) -> bytes:
    record = {"id": sample_id, "step_rewards": rewards}
    if levels is not None:
        record["levels"] = levels
    if error is not None:
        record["error"] = error
    return (json.dumps(record) + "\n").encode()


async def score_genprm(
    verifier, samples: Sequence[dict], write: Callable[[bytes], None], progress=None
) -> None:
    """Every step of every sample with a GenPRMVerifier, all samples in flight at once (within
    the verifier's concurrency)."""

    def finished(index: int, result) -> None:
        write(score_line(samples[index]["id"], result.rewards, result.error, result.levels))
        if progress is not None:
            progress(len(result.rewards))

    items = [(sample["problem"], sample["steps"]) for sample in samples]
    await verifier.ascore_many(items, stop_at_first_error=False, on_result=finished)


def critic_rewards(prediction: int | None, steps: int) -> list[float]:
    """Step rewards from a critic's first-wrong-paragraph prediction: 1.0 before it, 0.0 from
    it on; all 1.0 for -1; all 0.5 when the critic named no valid index.

    >>> critic_rewards(1, 3), critic_rewards(-1, 2), critic_rewards(None, 2)
    ([1.0, 0.0, 0.0], [1.0, 1.0], [0.5, 0.5])
    """
    if prediction is None:
        return [0.5] * steps
    if prediction < 0:
        return [1.0] * steps
    return [1.0 if index < prediction else 0.0 for index in range(steps)]


async def score_critic(
    engine,
    samples: Sequence[dict],
    write: Callable[[bytes], None],
    progress=None,
    critic_samples: int = 1,
    max_tokens: int = 4096,
    concurrency: int = 64,
) -> None:
    """Every sample's steps from the critic-LLM baseline's verdict (:func:`critic_rewards`)."""
    bound = asyncio.Semaphore(concurrency)

    async def one(sample: dict) -> None:
        steps = sample["steps"]
        async with bound:
            verdict = await critic_verdict(
                engine, sample["problem"], steps, critic_samples, max_tokens
            )
        write(score_line(sample["id"], critic_rewards(verdict.prediction, len(steps))))
        if progress is not None:
            progress(len(steps))

    await asyncio.gather(*(one(sample) for sample in samples))


def merge(samples: Sequence[dict], done: dict[str, dict]) -> list[dict]:
    """``samples`` with their ``step_rewards`` (and ``score_error`` where scoring failed);
    a sample without steps gets ``[]``. ValueError when a sample with steps has no score."""
    merged = []
    for sample in samples:
        sample = {k: v for k, v in sample.items() if k not in ("step_rewards", "score_error")}
        if sample["id"] in done:
            sample["step_rewards"] = done[sample["id"]]["step_rewards"]
            if done[sample["id"]].get("error"):
                sample["score_error"] = done[sample["id"]]["error"]
        elif not sample["steps"]:
            sample["step_rewards"] = []
        else:
            raise ValueError(f"sample {sample['id']} has not been scored")
        merged.append(sample)
    return merged


def views(samples: Sequence[dict]) -> list[dict]:
    """What the Best-of-N arithmetic reads of each sample; a sample that could not be scored
    ranks like one without steps, and an empty pool counts as one wrong sample."""
    if not samples:
        return [{"final_answer": None, "correct": False, "step_rewards": []}]
    return [
        {
            "final_answer": sample["final_answer"],
            "correct": bool(sample["correct"]),
            "step_rewards": [] if sample.get("score_error") else sample["step_rewards"],
        }
        for sample in samples
    ]


def finish(
    out: Path, samples: Sequence[dict], settings: dict, title: str, subsets: int, seed: int
) -> dict:
    """Merge the scores into ``out/samples.jsonl`` (atomically), compute the metrics and
    write the report; the metrics."""
    merged = merge(samples, scored(out))
    bon_samples.write_samples(out / SAMPLES, merged)
    groups = bon_samples.by_problem(merged)
    largest = max(len(group) for group in groups)
    metrics = compute_metrics([views(group) for group in groups], largest, subsets, seed)
    notes = [f"{len(groups)} problems, {len(merged)} samples"]
    if len({len(group) for group in groups}) > 1:
        notes.append(
            "problems have different numbers of samples: a problem with fewer than n uses all "
            "of its samples"
        )
    empty = sum(not sample["steps"] for sample in merged)
    if empty:
        notes.append(f"{empty} samples have no paragraphs (wrong, reward 0)")
    failed = sum(bool(sample.get("score_error")) for sample in merged)
    if failed:
        notes.append(f"{failed} samples could not be scored (reward 0): see `score_error`")
    write_report(out, metrics, settings, title, notes)
    return metrics


# ------------------------------------------------------------------------------ command


def command_settings(args) -> dict:
    """What the stored work depends on (checked on resume), and ``subsets``."""
    settings = {
        "input": None if args.samples else str(args.input),
        "samples": str(args.samples) if args.samples else None,
        "limit": args.limit,
        "n": args.n if args.samples else args.n or DEFAULT_N,
        "engine": args.engine,
        "model": args.model,
        "verifier": args.verifier,
        "seed": args.seed,
        "subsets": args.subsets,
    }
    if not args.samples:
        settings.update(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            # which model generates (see genprm.cli.policy_engine_from_args)
            policy=args.policy_model or ("served model" if args.policy_base_urls else "engine"),
        )
    settings.update(verifier_settings(args))
    if args.verifier == "critic":
        settings["critic_max_tokens"] = args.critic_max_tokens
    return settings


def run_command(parser, args) -> int:
    """``genprm-eval bon``: see :mod:`eval.cli`."""
    if args.n is not None and args.n < 1 or args.subsets < 1:
        parser.error("--n and --subsets must be at least 1")
    return as_only_writer(args, lambda: _run(parser, args))


def _run(parser, args) -> int:
    from genprm.problems import ProblemFields, load_problems

    settings = command_settings(args)
    n = args.n or DEFAULT_N
    try:
        start(args.out, settings)
        if args.samples:
            samples = bon_samples.read_samples(args.samples, args.limit, args.n)
            problems, done_problems = [], {}
        else:
            problems, errors = load_problems(str(args.input), ProblemFields(), args.limit)
            for error in errors:
                print(f"genprm-eval: skipped {error}", file=sys.stderr)
            if errors and not problems:
                raise ValueError(f"{args.input}: no usable problems")
            done_problems = bon_samples.generated_problems(args.out / SAMPLES, n)
            samples = [s for p in problems for s in done_problems.get(p["id"], [])]
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    if not problems and not samples:
        return nothing_selected(args.samples or args.input, args.limit)
    pending_problems = [p for p in problems if p["id"] not in done_problems]
    done = scored(args.out)
    if done_problems or done:
        print(
            f"genprm-eval: resuming {args.out}: {len(done_problems)} problems already sampled, "
            f"{len(done)} samples already scored",
            file=sys.stderr,
        )
    ungraded = any(sample["correct"] is None for sample in samples)
    if pending_problems or ungraded or to_score(samples, done):
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            samples = _work(parser, args, n, problems, samples)
        except (EngineError, ValueError) as error:
            print(f"genprm-eval: {error}", file=sys.stderr)
            print("genprm-eval: rerun the same command to continue", file=sys.stderr)
            return 1
    title = f"Best-of-N: {args.verifier} {args.model or 'embedded model'}"
    metrics = finish(args.out, samples, settings, title, args.subsets, args.seed)
    print(text_table(metrics))
    print(f"single sample: {metrics['single_sample']:.1f}")
    print(f"report: {args.out / REPORT}  plot: {args.out / CURVE}")
    if args.wandb_project:
        _log_to_wandb(args, metrics, settings)
    return 0


async def collect(
    out: Path,
    *,
    problems: Sequence[dict] = (),
    samples: Sequence[dict] = (),
    n: int,
    params=None,
    policy_engine=None,
    generator: Callable | None = None,
    grader,
    scorer: Callable,
    concurrency: int = 64,
    bars: bool = False,
) -> list[dict]:
    """The run's samples, in problem order, once everything missing is done: ``problems``
    whose ``n`` samples are not in ``out/samples.jsonl`` are generated (``await
    generator(pending, write, progress)``; by default :func:`bon_samples.generate` with
    ``policy_engine`` and ``params``), else ``samples`` are used as given; ungraded samples are
    graded, and the samples without a line in ``out/scores.jsonl`` scored with ``await
    scorer(pending, write, progress)`` (see :func:`score_shard`)."""
    from tqdm import tqdm

    if problems:
        done_problems = bon_samples.generated_problems(out / SAMPLES, n)
        pending_problems = [p for p in problems if p["id"] not in done_problems]
        if pending_problems:
            bar = tqdm(total=len(pending_problems) * n, unit="sample", desc="generate",
                       file=sys.stderr, disable=not bars)  # fmt: skip
            write = appender(out / SAMPLES)
            if generator is None:
                await bon_samples.generate(
                    policy_engine, pending_problems, params, grader, write, bar.update,
                    concurrency,
                )  # fmt: skip
            else:
                await generator(pending_problems, write, bar.update)
            bar.close()
            done_problems = bon_samples.generated_problems(out / SAMPLES, n)
        samples = [sample for p in problems for sample in done_problems[p["id"]]]
    samples = list(samples)
    await bon_samples.grade(samples, grader)
    pending = to_score(samples, scored(out))
    if pending:
        progress = StepProgress(len(pending), "sample", "score", disable=not bars)
        started = time.monotonic()
        await scorer(pending, appender(out / SCORES), progress)
        progress.close()
        if bars:
            print(
                f"genprm-eval: scored {len(pending)} samples, {progress.steps} steps in "
                f"{time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
    return samples


async def generate_shard(args, n: int, tools, problems, write, progress) -> None:
    """``n`` graded samples of each of ``problems`` from ``tools``' policy engine (here, or in
    a Ray actor)."""
    from genprm.policy import AnswerGrader

    params = bon_samples.policy_params(n, args.temperature, args.max_tokens, args.seed)
    await bon_samples.generate(
        tools.policy_engine, problems, params, AnswerGrader(tools.sandbox), write, progress,
        args.concurrency,
    )  # fmt: skip


async def score_shard(args, tools, samples, write, progress) -> None:
    """Score lines of ``samples`` with the verifier the flags chose, on ``tools``."""
    if args.verifier == "genprm":
        await score_genprm(tools.verifier, samples, write, progress)
    else:
        await score_critic(
            tools.engine, samples, write, progress, args.critic_samples,
            args.critic_max_tokens, args.concurrency,
        )  # fmt: skip


def _work(parser, args, n: int, problems: list, samples: list) -> list:
    """Start the engines and the sandbox (here, or in each Ray actor), then :func:`collect`."""
    from genprm.cli import engine_options, policy_engine_options
    from genprm.cluster import RayPool, on_actors, ray_options
    from genprm.policy import AnswerGrader
    from genprm.sandbox import Sandbox

    policy = policy_engine_options(parser, args) if problems else None
    make_tools = partial(VerifierTools, args, engine_options(parser, args), policy)
    work = partial(
        collect, args.out, problems=problems, samples=samples, n=n, concurrency=args.concurrency,
        bars=True,
    )  # fmt: skip
    ray = ray_options(args)
    if ray is None:
        with make_tools() as tools:
            return asyncio.run(
                work(
                    generator=partial(generate_shard, args, n, tools),
                    grader=AnswerGrader(tools.sandbox),
                    scorer=partial(score_shard, args, tools),
                )
            )
    # given samples may need grading (math-verify, in a sandbox of this process)
    ungraded = any(sample.get("correct") is None for sample in samples)
    with RayPool(ray, make_tools, tp=args.tp) as pool:
        sandbox = Sandbox(workers=1, bwrap=args.bwrap) if ungraded else None
        try:
            return asyncio.run(
                work(
                    generator=on_actors(pool, partial(generate_shard, args, n)),
                    grader=AnswerGrader(sandbox),
                    scorer=on_actors(pool, partial(score_shard, args), key=_problem),
                )
            )
        finally:
            if sandbox is not None:
                sandbox.close()


def _problem(sample: dict) -> str:
    """A problem's samples go to one actor, whose prefix cache then holds the problem once."""
    return sample["problem_id"]


def _log_to_wandb(args, metrics: dict, settings: dict) -> None:
    import wandb

    with wandb_run(args.wandb_project, settings, args.out) as run:
        for row, n in enumerate(metrics["n"]):
            values = {"n": n, "pass_at_n": metrics["pass_at_n"][row]}
            values["majority"] = metrics["majority"][row]
            for key in ("best_of_n", "weighted_majority"):
                values.update((f"{key}/{how}", v[row]) for how, v in metrics[key].items())
            run.log(values)
        run.summary["single_sample"] = metrics["single_sample"]
        run.log({"bon_curve": wandb.Image(str(args.out / CURVE))})
