"""``genprm-eval refine``: critique-refine (spec §7; paper §5.4, upstream
``src/prm_evaluation/policy_refine.py``): the command line (see :mod:`eval.refine`).

The problems are refined on engines of this process, or with ``--executor ray`` on Ray actors,
each with its own engines and sandbox; either way this process appends their lines to
``refine.jsonl`` (on Ray, a shard's lines once the shard is finished), so a run resumes the same
whichever executor wrote its folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from eval.commands import as_only_writer, nothing_selected
from eval.verifier_args import (
    EMBEDDED_MAX_TOKENS,
    VERIFIER_DEFAULTS,
    VerifierTools,
    add_verifier_arguments,
    verifier_settings,
)
from genprm.backends import EngineError
from genprm.cli import (
    add_engine_arguments,
    add_policy_engine_arguments,
    engine_options,
    policy_engine_options,
    resolve_defaults,
)
from genprm.cluster import RayPool, add_executor_arguments, on_actors, ray_options
from genprm.lifetime import command
from genprm.paths import data_dir
from genprm.policy import AnswerGrader
from genprm.problems import ProblemFields, load_problems
from genprm.runs import appender, wandb_run
from genprm.shards import in_shard, parse_shard

from .prompts import MAX_TOKENS, QWEN_SYSTEM
from .report import PLOT, REPORT, refine_metrics, write_report
from .results import RESULTS, read_lines, start
from .samples import read_samples
from .turns import MAX_TURNS, Policy, Refiner, refine_all

SAMPLE_ROWS = 20  # problems whose turns go to W&B


def add_refine_parser(subparsers) -> argparse.ArgumentParser:
    """The ``refine`` subcommand of ``genprm-eval`` (``run_refine`` runs it)."""
    parser = subparsers.add_parser(
        "refine",
        help="critique-refine: the verifier's critique of the first wrong step goes back to "
        "the policy, up to 3 turns (accuracy per turn)",
        description="Critique-refine (spec §7): refine.jsonl, metrics.json, report.md and "
        f"{PLOT} in --out.",
    )
    parser.set_defaults(refine_parser=parser)  # engine_options reports flag errors with it
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--input",
        default=str(data_dir() / "math500" / "test.jsonl"),
        help="problems with answers: JSONL (MATH-500, GSM8K), parquet, HF folder or id "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        help="first solutions to refine, {id, problem, answer, text} per line, instead of the "
        "policy's; Best-of-N's samples.jsonl works (the first sample of each problem_id)",
    )
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument(
        "--shard", type=parse_shard, metavar="I/N", help="every N-th problem from I"
    )
    parser.add_argument("--turns", type=int, default=MAX_TURNS, help="refine turns at most")
    policy = add_policy_engine_arguments(
        parser, "the model that solves and refines (default: the verifier's engine)"
    )
    policy.add_argument(
        "--system-prompt",
        default=QWEN_SYSTEM,
        help="the policy's system prompt (default: Qwen2.5-Instruct's, %(default)r); '' sends "
        "none, so the chat template's own default applies",
    )
    policy.add_argument(
        "--max-tokens",
        type=int,
        help=f"policy tokens per answer (default {MAX_TOKENS}; the embedded model: "
        f"{EMBEDDED_MAX_TOKENS})",
    )
    parser.set_defaults(
        defaults={**VERIFIER_DEFAULTS, "max_tokens": (MAX_TOKENS, EMBEDDED_MAX_TOKENS)}
    )
    policy.add_argument("--seed", type=int, help="a seed for every request (policy, verifier)")
    add_verifier_arguments(parser, critic=False)
    parser.add_argument("--concurrency", type=int, default=64, help="problems in flight")
    parser.add_argument("--wandb-project", help="log accuracy per turn, the plot, sample turns")
    add_engine_arguments(parser)
    add_executor_arguments(parser)
    return parser


def run_refine(args: argparse.Namespace) -> int:
    """Run ``genprm-eval refine`` from its parsed arguments; the exit status."""
    if args.turns < 0:
        args.refine_parser.error("--turns must be at least 0")
    return as_only_writer(args, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        if args.samples:
            records, repeated = read_samples(args.samples, args.limit)
            if repeated:
                print(
                    f"genprm-eval: {repeated} more solutions of problems already read in "
                    f"{args.samples} left out (one per problem)",
                    file=sys.stderr,
                )
        else:
            records, errors = load_problems(args.input, ProblemFields(), args.limit)
            if errors:
                shown = "; ".join(errors[:5])
                raise ValueError(f"{len(errors)} unusable problems in {args.input}: {shown}")
        records = in_shard(records, args.shard)
        settings = _settings(args)
        done = start(args.out, settings)
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    if not records:
        shard = f" (shard {args.shard[0]}/{args.shard[1]})" if args.shard else ""
        return nothing_selected(f"{args.samples or args.input}{shard}", args.limit)
    pending = [record for record in records if record["id"] not in done]
    if done:
        print(f"genprm-eval: {len(done)} problems already in {args.out}", file=sys.stderr)
    if pending:
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            _refine_pending(args, pending)
        except EngineError as error:
            print(f"genprm-eval: {error}", file=sys.stderr)
            print("genprm-eval: rerun the same command to continue", file=sys.stderr)
            return 1
    ids = {record["id"] for record in records}
    lines = [line for line in read_lines(args.out / RESULTS) if line["id"] in ids]
    metrics = refine_metrics(lines, args.turns)
    notes = []
    failed = [line["id"] for line in lines if line.get("error")]
    if failed:
        notes.append(
            f"{len(failed)} problems stopped early (see `error`): {', '.join(failed[:10])}"
        )
    unscored = sum(1 for line in lines for turn in line["turns"] if "error" in turn)
    if unscored:
        notes.append(f"{unscored} solutions could not be scored (they stand): see turns' `error`")
    title = f"policy {_policy_name(args)}, verifier {_model_name(args)}"
    write_report(args.out, metrics, settings, title, notes)
    _print_table(args, metrics)
    if args.wandb_project:
        _log_to_wandb(args, metrics, settings, lines)
    return 0


def _model_name(args) -> str:
    if args.model:
        return args.model
    return "embedded model" if args.engine == "vllm" else "served model"


def _policy_name(args) -> str:
    if args.samples:
        return f"samples {args.samples}"
    if args.policy_model:
        return args.policy_model
    return "served model" if args.policy_base_urls else _model_name(args)


def _settings(args) -> dict:
    return {
        "engine": args.engine,
        "model": args.model,
        "input": None if args.samples else args.input,
        "samples": str(args.samples) if args.samples else None,
        "limit": args.limit,
        "shard": list(args.shard) if args.shard else None,
        "turns": args.turns,
        "policy_base_urls": args.policy_base_urls,
        "policy_model": args.policy_model,
        "system_prompt": args.system_prompt,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        **verifier_settings(args),
    }


def _refine_pending(args, pending: list[dict]) -> None:
    """Refine ``pending`` here, or on Ray actors with ``--executor ray``."""
    parser = args.refine_parser
    make_tools = partial(
        VerifierTools,
        args,
        engine_options(parser, args),
        policy_engine_options(parser, args),
        seed=args.seed,
    )
    ray = ray_options(args)
    if ray is None:
        with make_tools() as tools:
            _refine_with_progress(args, pending, partial(refine_shard, args, tools))
        return
    with RayPool(ray, make_tools, tp=args.tp) as pool:
        _refine_with_progress(args, pending, on_actors(pool, partial(refine_shard, args)))
        print(f"genprm-eval: refined on {len(pool.actors)} Ray actors", file=sys.stderr)


async def refine_shard(args, tools: VerifierTools, records: list[dict], write, progress) -> None:
    """Refine ``records`` with ``tools``' engines and sandbox (here, or in a Ray actor)."""
    policy = Policy(tools.policy_engine, args.system_prompt or None, args.max_tokens, args.seed)
    refiner = Refiner(tools.verifier, policy, AnswerGrader(tools.sandbox), args.turns)
    await refine_all(refiner, records, write, progress, args.concurrency)


def _refine_with_progress(args, pending: list[dict], refine: Callable) -> None:
    """``await refine(pending, write, progress)``, its lines appended to ``refine.jsonl``, with
    a progress bar and the time it took."""
    from tqdm import tqdm

    write = appender(args.out / RESULTS)
    bar = tqdm(total=len(pending), unit="problem", desc="refine", file=sys.stderr)
    refined = 0

    def progress(line: dict) -> None:
        nonlocal refined
        refined += len(line["turns"]) - 1
        bar.update(1)
        bar.set_postfix(refined=refined)

    started = time.monotonic()
    asyncio.run(refine(pending, write, progress))
    bar.close()
    print(
        f"genprm-eval: {len(pending)} problems, {refined} refinements in "
        f"{time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


def _print_table(args, metrics: dict) -> None:
    print(f"{'turn':>4} {'accuracy':>8} {'refined':>7} {'changed':>7}")
    for k in metrics["turns"]:
        print(
            f"{k:4d} {metrics['accuracy'][k]:8.1f} {metrics['refined'][k]:7d}"
            f" {metrics['changed'][k]:7d}"
        )
    print(f"report: {args.out / REPORT}  plot: {args.out / PLOT}")


def _log_to_wandb(args, metrics: dict, settings: dict, lines: list[dict]) -> None:
    import wandb

    with wandb_run(args.wandb_project, settings, args.out) as run:
        for k in metrics["turns"]:
            run.log({key: metrics[key][k] for key in ("accuracy", "refined", "changed", "fixed",
                                                       "broken")} | {"turn": k})  # fmt: skip
        run.log({"accuracy_per_turn": wandb.Image(str(args.out / PLOT))})
        table = wandb.Table(
            columns=["id", "turn", "prediction", "final_answer", "correct", "critique", "text"]
        )
        for line in lines[:SAMPLE_ROWS]:
            for k, turn in enumerate(line["turns"]):
                table.add_data(
                    line["id"], k, turn["prediction"], turn["final_answer"], turn["correct"],
                    turn.get("critique"), turn["text"],
                )  # fmt: skip
        run.log({"sample_turns": table})


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m eval.refine refine ...``: the ``refine`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="genprm-eval", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_refine_parser(subparsers)
    args = parser.parse_args(argv)
    args.preset = resolve_defaults(args, args.defaults)
    return run_refine(args)
