"""``genprm-eval``: evaluate verifiers.

    genprm-eval processbench --engine vllm --model GenPRM/GenPRM-7B --maj 8 \\
        --prompt-style upstream --tp 4 --out runs/genprm-7b
    genprm-eval processbench --engine openai --base-url http://node1:8000/v1 --out runs/x
    genprm-eval processbench --verifier critic --critic-samples 8 --out runs/critic
    genprm-eval processbench --predictions elsewhere.jsonl --out runs/scored
    genprm-eval processbench --engine vllm --model GenPRM/GenPRM-7B --executor ray \\
        --ray-address auto --out runs/genprm-7b
    genprm-eval bon --input ../shared/data/math500/test.jsonl --limit 50 --n 16 --maj 8 \\
        --engine vllm --model outputs/genprm-7b --out runs/bon
    genprm-eval refine --input ../shared/data/math500/test.jsonl --limit 50 --out runs/refine
    genprm-eval search --method beam --input ../shared/data/math500/test.jsonl --limit 50 \\
        --n 16 --beam-width 4 --engine vllm --model outputs/genprm-7b --out runs/search

Without ``--model`` the vllm engine runs the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from functools import partial
from pathlib import Path

from genprm.backends import EngineError
from genprm.cli import (
    add_engine_arguments,
    add_policy_engine_arguments,
    engine_options,
    resolve_defaults,
)
from genprm.cluster import add_executor_arguments
from genprm.lifetime import command
from genprm.paths import data_dir
from genprm.runs import SETTINGS, appender, check_settings, read_results, wandb_run
from genprm.verifier import CODE_MODES

from .commands import StepProgress, as_only_writer, nothing_selected
from .processbench import runner
from .processbench.critic import MAX_TOKENS as CRITIC_MAX_TOKENS
from .processbench.data import SPLITS, load_splits
from .processbench.metrics import score_predictions
from .processbench.report import write_report
from .refine.cli import add_refine_parser, run_refine
from .search.cli import add_search_parser, run_search
from .verifier_args import (
    EMBEDDED_MAX_TOKENS,
    VERIFIER_DEFAULTS,
    VerifierTools,
    add_verifier_arguments,
    verifier_settings,
)

SAMPLE_ROWS = 20  # solutions whose rationales go to W&B


def processbench_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "processbench",
        help="score a verifier on ProcessBench (F1 of the first wrong step per split)",
        description="Score a GenPRM checkpoint (or a critic LLM, or existing predictions) on "
        "ProcessBench: predictions.jsonl, metrics.json, report.md and f1_per_split.png in --out.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--data-dir",
        default=str(data_dir() / "processbench"),
        help="folder of {split}.jsonl, or a Hugging Face dataset id (default: "
        "$GENPRM_DATA_DIR/processbench, else ../shared/data/processbench: %(default)s)",
    )
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated (default: %(default)s)"
    )
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--limit", type=int, help="the first N rows of each split")
    rows.add_argument(
        "--sample",
        type=int,
        help="N rows of each split, evenly spaced (each split lists its erroneous solutions "
        "first: a --limit slice has no correct one)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        help="score this JSONL of {id, prediction} (no model); missing ids count as wrong",
    )
    add_verifier_arguments(parser)
    parser.add_argument(
        "--max-tokens",
        type=int,
        help=f"critic: tokens per answer (default {CRITIC_MAX_TOKENS}; the embedded model: "
        f"{EMBEDDED_MAX_TOKENS})",
    )
    parser.set_defaults(
        defaults={**VERIFIER_DEFAULTS, "max_tokens": (CRITIC_MAX_TOKENS, EMBEDDED_MAX_TOKENS)}
    )
    parser.add_argument("--concurrency", type=int, default=64, help="solutions in flight")
    parser.add_argument("--wandb-project", help="log metrics, the plot and sample rationales")
    add_engine_arguments(parser)
    add_executor_arguments(parser)
    return parser


def bon_parser(subparsers) -> argparse.ArgumentParser:
    """``genprm-eval bon``: Best-of-N with the GenPRM verifier (eval/bon)."""
    from .bon.aggregate import DEFAULT_SUBSETS
    from .bon.samples import MAX_TOKENS, TEMPERATURE

    parser = subparsers.add_parser(
        "bon",
        help="Best-of-N: N policy samples per problem, picked by step rewards",
        description="Sample N solutions per problem (or read them with --samples), score every "
        "step with the GenPRM verifier (or the critic), and report accuracy against n for "
        "best-of-n (last/min/mean/product of step rewards), majority, weighted majority and "
        "pass@n: samples.jsonl, scores.jsonl, metrics.json, report.md and bon_curve.png in "
        "--out (resumable). The same engine generates and scores unless --policy-base-url "
        "names an OpenAI-compatible policy server (or --policy-model a second vllm model).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--input",
        type=Path,
        default=data_dir() / "math500" / "test.jsonl",
        help="problems with reference answers, MATH-500/GSM8K JSONL (default: %(default)s)",
    )
    parser.add_argument("--samples", type=Path, help="use these samples instead of generating")
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument(
        "--n", type=int, help="samples per problem (default 8; with --samples: all, or the first N)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="policy sampling and subset seed (-1: unseeded)"
    )
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="policy")
    parser.add_argument(
        "--max-tokens",
        type=int,
        help=f"policy: per sample (default {MAX_TOKENS}; the embedded model: "
        f"{EMBEDDED_MAX_TOKENS})",
    )
    parser.add_argument(
        "--subsets", type=int, default=DEFAULT_SUBSETS, help="random subsets averaged per n"
    )
    add_verifier_arguments(parser)
    parser.add_argument(
        "--critic-max-tokens",
        type=int,
        help=f"critic (default {CRITIC_MAX_TOKENS}; the embedded model: {EMBEDDED_MAX_TOKENS})",
    )
    parser.set_defaults(
        defaults={
            **VERIFIER_DEFAULTS,
            "max_tokens": (MAX_TOKENS, EMBEDDED_MAX_TOKENS),
            "critic_max_tokens": (CRITIC_MAX_TOKENS, EMBEDDED_MAX_TOKENS),
        }
    )
    parser.add_argument("--concurrency", type=int, default=64, help="samples in flight")
    add_policy_engine_arguments(parser)
    parser.add_argument("--wandb-project", help="log the metrics per n and the curve")
    add_engine_arguments(parser)
    add_executor_arguments(parser)
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genprm-eval", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    processbench = processbench_parser(subparsers)
    bon = bon_parser(subparsers)
    add_refine_parser(subparsers)
    search = add_search_parser(subparsers)
    args = parser.parse_args(argv)
    if not getattr(args, "predictions", None):  # scoring a file runs no model
        args.preset = resolve_defaults(args, args.defaults)
    if args.command == "bon":
        from .bon.runner import run_command

        return run_command(bon, args)
    if args.command == "refine":
        return run_refine(args)
    if args.command == "search":
        return run_search(search, args)
    return as_only_writer(args, lambda: _processbench(processbench, args))


def _processbench(parser, args) -> int:
    try:
        rows = load_splits(args.data_dir, _splits(args.splits), args.limit)
        if args.sample is not None:
            rows = {
                split: evenly_spaced(split_rows, args.sample) for split, split_rows in rows.items()
            }
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    if not any(rows.values()):
        return nothing_selected(f"{', '.join(rows)} of {args.data_dir}", args.limit)
    if args.predictions:
        return _score_file(args, rows)
    return _evaluate(parser, args, rows)


def evenly_spaced(rows: list, count: int) -> list:
    """``count`` of ``rows`` at even intervals, in order.

    >>> evenly_spaced(list(range(10)), 4)
    [0, 2, 5, 7]
    """
    if count < 1:
        raise ValueError(f"--sample must be at least 1, got {count}")
    if count >= len(rows):
        return list(rows)
    return [rows[index * len(rows) // count] for index in range(count)]


def _splits(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _score_file(args, rows) -> int:
    settings = {"predictions": str(args.predictions), **_data_settings(args)}
    try:
        # A model run's folder (or one scored with other settings) is not overwritten.
        if any((args.out / name).exists() for name in (SETTINGS, runner.PREDICTIONS)):
            check_settings(args.out, settings)
        metrics, problems = score_predictions(args.predictions, rows)
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    notes = []
    if problems["missing"]:
        notes.append(f"{problems['missing']} ids have no prediction (counted wrong)")
    if problems["unknown"]:
        shown = ", ".join(problems["unknown"][:10])
        notes.append(f"{len(problems['unknown'])} ids are not in the data (not scored): {shown}")
    try:
        write_report(
            args.out, metrics, rows, settings, f"predictions from {args.predictions}", notes
        )
    except OSError as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"genprm-eval: {note}", file=sys.stderr)
    _finish(args, metrics, settings)
    return 0


def _data_settings(args) -> dict:
    return {
        "data": args.data_dir,
        "splits": _splits(args.splits),
        "limit": args.limit,
        "sample": args.sample,
    }


def _evaluate(parser, args, rows) -> int:
    settings = {
        "verifier": args.verifier,
        "engine": args.engine,
        "model": args.model,
        **_data_settings(args),
    }
    settings.update(verifier_settings(args))
    if args.verifier == "critic":
        settings["max_tokens"] = args.max_tokens
    try:
        done = runner.start(args.out, settings)
    except (OSError, ValueError) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    pending = [row for split_rows in rows.values() for row in split_rows if row.id not in done]
    if done:
        print(f"genprm-eval: {len(done)} solutions already in {args.out}", file=sys.stderr)
    if pending:
        # vLLM logs to stdout by default; keep it for the table.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            status = _score_pending(parser, args, pending)
        except EngineError as error:
            print(f"genprm-eval: {error}", file=sys.stderr)
            print("genprm-eval: rerun the same command to continue", file=sys.stderr)
            return 1
        if status:
            return status
    title = f"{args.verifier} {args.model or 'embedded model'}"
    try:
        metrics = runner.finish(args.out, rows, settings, title)
    except OSError as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 1
    _finish(args, metrics, settings)
    return 0


def _score_pending(parser, args, pending) -> int:
    from genprm.cluster import RayPool, on_actors, ray_options

    make_tools = partial(
        VerifierTools,
        args,
        engine_options(parser, args),
        sandbox=args.verifier == "genprm" and args.mode in CODE_MODES,
    )
    write = appender(args.out / runner.PREDICTIONS)
    progress = StepProgress(len(pending), "solution", "processbench")
    started = time.monotonic()
    ray = ray_options(args)
    if ray is None:
        with make_tools() as tools:
            asyncio.run(runner.score_rows(args, tools, pending, write, progress))
            counters = tools.engine.counters
        usage = (
            f"{counters.requests} requests, {counters.generated_tokens} tokens, "
            f"engine busy {counters.wall_s / (time.monotonic() - started):.0%} of the time"
        )
    else:
        with RayPool(ray, make_tools, tp=args.tp) as pool:
            score = on_actors(pool, partial(runner.score_rows, args))
            asyncio.run(score(pending, write, progress))
            usage = f"{len(pool.actors)} Ray actors"
    progress.close()
    print(
        f"genprm-eval: {len(pending)} solutions, {progress.steps} steps in "
        f"{time.monotonic() - started:.1f} s; {usage}",
        file=sys.stderr,
    )
    return 0


def _finish(args, metrics: dict, settings: dict) -> None:
    """Print the table and where the report is; log to W&B when asked."""
    print(f"{'split':15} {'n':>5} {'acc_err':>8} {'acc_corr':>8} {'F1':>6}")
    for split, values in metrics["splits"].items():
        print(
            f"{split:15} {values['n']:5d} {values['acc_err']:8.1f} {values['acc_corr']:8.1f}"
            f" {values['f1']:6.1f}"
        )
    print(f"{'average F1':15} {'':5} {'':8} {'':8} {metrics['average_f1']:6.1f}")
    print(f"report: {args.out / 'report.md'}  plot: {args.out / 'f1_per_split.png'}")
    if args.wandb_project:
        _log_to_wandb(args, metrics, settings)


def _log_to_wandb(args, metrics: dict, settings: dict) -> None:
    import wandb

    with wandb_run(args.wandb_project, settings, args.out) as run:
        flat = {f"{split}/{k}": v for split, m in metrics["splits"].items() for k, v in m.items()}
        run.log({**flat, "average_f1": metrics["average_f1"]})
        run.log({"f1_per_split": wandb.Image(str(args.out / "f1_per_split.png"))})
        records = read_results(args.out / runner.PREDICTIONS)
        if records:
            table = wandb.Table(columns=["id", "split", "label", "prediction", "step", "turn"])
            for record in records[:SAMPLE_ROWS]:
                for step, turn in enumerate(record.get("turns") or record.get("critiques") or []):
                    table.add_data(
                        record["id"], record["split"], record["label"], record["prediction"],
                        step, turn,
                    )  # fmt: skip
            run.log({"sample_rationales": table})


if __name__ == "__main__":
    sys.exit(main())
