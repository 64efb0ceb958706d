"""``genprm-eval search``: verifier-guided step-level beam search or diverse verifier tree
search (DVTS) over the policy's ``"Step k:"`` steps, with the GenPRM verifier's step reward as
the value; the final pools reported like Best-of-N, beside Best-of-N at the same policy-token
budget.

    genprm-eval search --method beam --input ../shared/data/math500/test.jsonl --limit 2 \\
        --n 4 --beam-width 2 --engine vllm --out runs/search
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from eval.bon.aggregate import DEFAULT_SUBSETS
from eval.bon.report import CURVE, REPORT, text_table
from eval.commands import as_only_writer, nothing_selected
from eval.verifier_args import (
    VERIFIER_DEFAULTS,
    VerifierTools,
    add_verifier_arguments,
    verifier_settings,
)
from genprm.backends import EngineError
from genprm.cli import add_engine_arguments, add_policy_engine_arguments
from genprm.paths import data_dir
from genprm.runs import appender

from . import runner
from .tree import METHODS, check

DEFAULT_N, DEFAULT_WIDTH, DEFAULT_MAX_STEPS = 8, 2, 20
TEMPERATURE = 0.7  # the policy's (Best-of-N's and the rollouts')
MAX_STEP_TOKENS = 256
# on the embedded model (genprm.cli.resolve_defaults)
EMBEDDED_MAX_STEPS, EMBEDDED_STEP_TOKENS = 5, 48


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search",
        help="verifier-guided beam search / DVTS over the policy's steps",
        description=__doc__.split("\n\n")[0]
        + ". Writes search.jsonl, samples.jsonl, metrics.json, report.md and bon_curve.png "
        "in --out (resumable).",
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--input",
        type=Path,
        default=data_dir() / "math500" / "test.jsonl",
        help="problems with reference answers, MATH-500/GSM8K JSONL (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument("--method", choices=METHODS, default="beam")
    parser.add_argument(
        "--n", type=int, default=DEFAULT_N, help="final candidates per problem (default: 8)"
    )
    parser.add_argument(
        "--beam-width",
        type=int,
        default=DEFAULT_WIDTH,
        help="M: children per beam; beam keeps N/M beams, dvts grows N/M subtrees (default: 2)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help=f"steps at most (default {DEFAULT_MAX_STEPS}; the embedded model: "
        f"{EMBEDDED_MAX_STEPS})",
    )
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="policy")
    parser.add_argument(
        "--max-step-tokens",
        type=int,
        help=f"policy: tokens per step (default {MAX_STEP_TOKENS}; the embedded model: "
        f"{EMBEDDED_STEP_TOKENS})",
    )
    parser.set_defaults(
        defaults={
            **VERIFIER_DEFAULTS,
            "max_steps": (DEFAULT_MAX_STEPS, EMBEDDED_MAX_STEPS),
            "max_step_tokens": (MAX_STEP_TOKENS, EMBEDDED_STEP_TOKENS),
        }
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="policy sampling and subset seed (-1: unseeded)"
    )
    parser.add_argument(
        "--compare-bon",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Best-of-N within the search's policy tokens per problem (default: on)",
    )
    parser.add_argument(
        "--bon-samples", type=int, help="Best-of-N samples generated per problem (default: 2N)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="problems (Best-of-N: samples) in flight"
    )
    parser.add_argument("--wandb-project", help="log the metrics per n and the curve")
    add_verifier_arguments(parser, critic=False)
    add_engine_arguments(parser)
    add_policy_engine_arguments(parser)


def command_settings(args) -> dict:
    """What the stored work depends on (checked on resume)."""
    return {
        "method": args.method,
        "input": str(args.input),
        "limit": args.limit,
        "n": args.n,
        "beam_width": args.beam_width,
        "max_steps": args.max_steps,
        "temperature": args.temperature,
        "max_step_tokens": args.max_step_tokens,
        "seed": args.seed,
        "compare_bon": args.compare_bon,
        "bon_samples": (args.bon_samples or 2 * args.n) if args.compare_bon else None,
        "engine": args.engine,
        "model": args.model,
        "policy": args.policy_model or ("served model" if args.policy_base_urls else "engine"),
        **verifier_settings(args),
    }


def run_search(parser, args) -> int:
    """``genprm-eval search``: see the module."""
    try:
        check(args.method, args.n, args.beam_width, args.max_steps)
    except ValueError as error:
        parser.error(str(error))
    if args.max_step_tokens < 1 or args.concurrency < 1 or (args.bon_samples or 1) < 1:
        parser.error("--max-step-tokens, --concurrency and --bon-samples must be at least 1")
    return as_only_writer(args, lambda: _run(parser, args))


def _run(parser, args) -> int:
    from genprm.problems import ProblemFields, load_problems

    settings = command_settings(args)
    try:
        runner.start(args.out, settings)
        problems, errors = load_problems(str(args.input), ProblemFields(), args.limit)
        for error in errors:
            print(f"genprm-eval: skipped {error}", file=sys.stderr)
        if errors and not problems:
            raise ValueError(f"{args.input}: no usable problems")
        records = runner.searched(args.out)
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    if not problems:
        return nothing_selected(args.input, args.limit)
    pending = [problem for problem in problems if problem["id"] not in records]
    if records:
        print(f"genprm-eval: resuming {args.out}: {len(records)} problems already searched",
              file=sys.stderr)  # fmt: skip
    bon = None
    if pending or args.compare_bon and _bon_pending(args, settings, problems, records):
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            bon = _work(parser, args, settings, problems, pending)
        except (EngineError, ValueError) as error:
            print(f"genprm-eval: {error}", file=sys.stderr)
            print("genprm-eval: rerun the same command to continue", file=sys.stderr)
            return 1
        records = runner.searched(args.out)
    elif args.compare_bon:
        bon = _stored_bon(args, settings, problems, records)
    ordered = [records[problem["id"]] for problem in problems]
    title = (
        f"Search ({args.method}, N={args.n}, M={args.beam_width}): {args.model or 'embedded model'}"
    )
    metrics = runner.finish(args.out, ordered, settings, title, DEFAULT_SUBSETS, args.seed, bon)
    print(text_table(metrics))
    print(
        f"policy tokens/problem {metrics['policy_tokens_per_problem']:.0f}, "
        f"verifier tokens/problem {metrics['verifier_tokens_per_problem']:.0f}"
    )
    if "equal_budget" in metrics:
        for side, row in metrics["equal_budget"].items():
            print(
                f"equal budget, {side}: {row['samples_per_problem']:.1f} samples/problem, "
                f"best-of-n (min) {row['best_of_n']['min']:.1f}, majority {row['majority']:.1f}"
            )
    print(f"report: {args.out / REPORT}  plot: {args.out / CURVE}")
    if args.wandb_project:
        from eval.bon.runner import _log_to_wandb

        _log_to_wandb(args, metrics, settings)
    return 0


def _budgets(records: dict) -> dict[str, int]:
    return {problem_id: record["policy_tokens"] for problem_id, record in records.items()}


def _bon_pending(args, settings: dict, problems: list, records: dict) -> bool:
    """Whether the equal-budget Best-of-N still has samples to generate or score."""
    from eval.bon.runner import scored, to_score

    folder = args.out / runner.BON_DIR
    if any(problem["id"] not in records for problem in problems):
        return True
    kept = runner.bon_kept(folder, problems, _budgets(records), settings["bon_samples"])
    return kept is None or bool(to_score(kept, scored(folder)))


def _stored_bon(args, settings: dict, problems: list, records: dict) -> list[dict]:
    from eval.bon.runner import merge, scored

    folder = args.out / runner.BON_DIR
    kept = runner.bon_kept(folder, problems, _budgets(records), settings["bon_samples"])
    return merge(kept, scored(folder))


def _work(parser, args, settings: dict, problems: list, pending: list) -> list[dict] | None:
    """Start the engines and the sandbox; search the pending problems, then (with
    ``--compare-bon``) the equal-budget Best-of-N; its samples."""
    from tqdm import tqdm

    from eval.bon.samples import policy_params
    from genprm.cli import engine_options, policy_engine_options
    from genprm.policy import AnswerGrader

    tools = VerifierTools(args, engine_options(parser, args), policy_engine_options(parser, args))
    with tools:
        policy, verifier = tools.policy_engine, tools.verifier
        grader = AnswerGrader(tools.sandbox)
        step_params = policy_params(1, args.temperature, args.max_step_tokens, args.seed)
        bar = tqdm(total=len(pending), unit="problem", desc="search", file=sys.stderr,
                   disable=not pending)  # fmt: skip

        def progress(record: dict) -> None:
            bar.update(1)
            bar.set_postfix(policy=record["policy_tokens"], verifier=record["verifier_tokens"])

        async def work() -> list[dict] | None:
            await runner.search_problems(
                pending, policy, verifier, grader, step_params, appender(args.out / runner.SEARCH),
                method=args.method, n=args.n, width=args.beam_width, max_steps=args.max_steps,
                concurrency=args.concurrency, progress=progress,
            )  # fmt: skip
            bar.close()
            if not args.compare_bon:
                return None
            count = settings["bon_samples"]
            max_tokens = args.max_steps * args.max_step_tokens
            return await runner.compare_bon(
                args.out / runner.BON_DIR, problems, _budgets(runner.searched(args.out)), count,
                policy, verifier, grader, policy_params(count, args.temperature, max_tokens,
                args.seed),
            )  # fmt: skip

        return asyncio.run(work())
