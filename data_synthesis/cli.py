"""``genprm-synth``: from math problems to a filtered GenPRM training set.

    genprm-synth run configs/cpu-default.yml --input ../shared/data/gsm8k/test.jsonl \\
        --limit 2 --out runs/synth
    genprm-synth solve --input problems.jsonl --output solve.jsonl --config configs/paper.yml
    genprm-synth rollout --input solve.jsonl --output rollout.jsonl --engine openai \\
        --base-url http://node1:8000/v1
    genprm-synth label --input rollout.jsonl --output label.jsonl --method rpe --epsilon 0.8
    genprm-synth rationale --input label.jsonl --output rationale.jsonl --config configs/paper.yml
    genprm-synth filter --input rationale.jsonl --output filter.jsonl
    genprm-synth export --input filter.jsonl --out runs/synth/export

Every stage appends records as they finish and resumes by id when rerun (after a crash, even
``kill -9``); ``--shard I/N`` processes every N-th input record from the I-th. ``--executor ray``
runs the records on the actors of a Ray cluster (one engine each) and writes the same files:

    genprm-synth run configs/paper.yml --input problems.jsonl --out runs/synth \\
        --executor ray --ray-address auto
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from genprm.backends import EngineError, make_engine
from genprm.cli import ENGINE_DEFAULTS, add_engine_arguments, engine_options, resolve_defaults
from genprm.cluster import add_executor_arguments, ray_options
from genprm.jsonl import InputError, check_readable
from genprm.lifetime import command
from genprm.paths import OutputBusy
from genprm.problems import check_source
from genprm.runs import ResumeError
from genprm.shards import parse_shard

from .config import ConfigError, load_config
from .pipeline import (
    EXPORT_DIR,
    RECORD_STAGES,
    SynthTools,
    open_pool,
    run_chain,
    run_export,
    run_one,
)
from .runner import StageFailed, StageSummary
from .tracking import Tracker
from .validate import validate

ENGINE_STAGES = ("solve", "rollout", "rationale")
STAGE_HELP = {
    "solve": "the policy writes solutions in 'Step k:' form; graded against the reference",
    "rollout": "Monte Carlo value of every step (adaptive K, early stop at MC = 0)",
    "label": "relative-progress labels (or hard / diff) and the first wrong step; no engine",
    "rationale": "the strong model verifies each step with executed code; its judge votes",
    "filter": "keep solutions whose judge agrees with the labels' first wrong step",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, help="the first N input records")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N", help="every N-th record from I")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip bad input lines (counted) instead of stopping",
    )
    parser.add_argument("--wandb-project", help="log stage stats, histograms and a sample table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genprm-synth", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="every stage in order, then export")
    run.add_argument("config", type=Path, help="synthesis config (configs/cpu-default.yml)")
    run.add_argument("--input", required=True, help="problems: .jsonl, .parquet, HF folder or id")
    run.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    _common(run)

    for name in RECORD_STAGES:
        stage = commands.add_parser(name, help=STAGE_HELP[name])
        stage.set_defaults(stage_parser=stage)  # engine_from_args reports flag errors with it
        stage.add_argument(
            "--input", required=True, help="the previous stage's JSONL (solve: problems)"
        )
        stage.add_argument("--output", type=Path, required=True, help="this stage's JSONL")
        stage.add_argument("--config", type=Path, help="settings and engines (default: defaults)")
        _common(stage)
        if name == "label":
            stage.add_argument("--method", choices=("rpe", "hard", "diff"))
            stage.add_argument("--epsilon", type=float, help="rpe: P_t >= epsilon is correct")
            stage.add_argument("--threshold", type=float, help="diff: MC_t - MC_t-1 >= threshold")
        if name in ENGINE_STAGES:
            add_engine_arguments(stage)
            stage.add_argument(
                "--config-engines",
                action="store_true",
                help="take the engine from --config's engines section instead of the flags",
            )

    export = commands.add_parser("export", help="conversations JSONL, a HF dataset folder, a card")
    export.add_argument("--input", type=Path, required=True, help="the filter stage's JSONL")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.add_argument("--config", type=Path, help="the config to describe in the card")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        if args.command in ("run", "solve"):
            check_source(args.input)  # before any engine, sandbox or output
        else:
            check_readable(Path(args.input))
        if args.command == "run":
            return _run(args)
        if args.command == "export":
            return _export(args)
        return _stage(parser, args)
    except (StageFailed, EngineError) as error:
        print(f"genprm-synth: {error}", file=sys.stderr)
        return 1
    except (ConfigError, InputError, ResumeError, OutputBusy, OSError) as error:
        print(f"genprm-synth: {error}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    replacing = args.out.is_dir() and any(args.out.iterdir())
    exported = run_export(args.input, args.out, config)
    if not exported["conversations"]:
        print(f"export: {args.input} has no records")
    _print_export(exported, args.out)
    if replacing:
        print(f"export: replaced the previous export in {args.out}")
    return 0


def _say_preset(line: str | None) -> None:
    if line:
        print(f"genprm-synth: {line}", file=sys.stderr)


def _stage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = load_config(args.config)
    validate(config)
    if args.command == "label":
        for key in ("method", "epsilon", "threshold"):
            if getattr(args, key) is not None:
                config.stages.setdefault("label", {})[key] = getattr(args, key)
    make = None
    if args.command in ENGINE_STAGES and not args.config_engines:
        _say_preset(resolve_defaults(args, ENGINE_DEFAULTS))
        make = partial(make_engine, **engine_options(args.stage_parser, args))
    if args.command in ENGINE_STAGES:
        _say_preset(config.with_embedded_preset(make.keywords if make else None))
    tools = SynthTools(config, make)
    pool = open_pool(ray_options(args), config, make)
    tracker = Tracker(args.wandb_project, args.command, config, args.output.parent)
    try:
        summary = run_one(
            args.command,
            config,
            args.input,
            args.output,
            tools,
            limit=args.limit,
            shard=args.shard,
            skip_invalid=args.skip_invalid,
            progress=not args.no_progress,
            pool=pool,
        )
    finally:
        if pool is not None:
            pool.close()
        tools.close()
    tracker.stage(summary)
    tracker.finish()
    _print_summaries([summary])
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    validate(config)
    _say_preset(config.with_embedded_preset())
    tracker = Tracker(args.wandb_project, "run", config, args.out)
    summaries, exported = run_chain(
        config,
        args.input,
        args.out,
        limit=args.limit,
        shard=args.shard,
        skip_invalid=args.skip_invalid,
        progress=not args.no_progress,
        on_stage=tracker.stage,
        ray=ray_options(args),
    )
    tracker.export(exported, args.out / EXPORT_DIR)
    tracker.finish()
    _print_summaries(summaries)
    _print_export(exported, args.out / EXPORT_DIR)
    return 0


SUMMARY_KEYS = (
    ("problems", "problems"),
    ("solutions", "solutions"),
    ("steps", "steps"),
    ("rollouts", "rollouts"),
    ("tokens", "tokens"),
    ("labels +", "labels_positive"),
    ("labels -", "labels_negative"),
    ("kept", "kept"),
    ("dropped", "dropped"),
)


def _print_summaries(summaries: list[StageSummary]) -> None:
    header = ["stage", "records"] + [title for title, _ in SUMMARY_KEYS]
    rows = []
    for summary in summaries:
        row = [summary.stage, f"{summary.finished}/{summary.inputs}"]
        row += [_number(summary.totals.get(key)) for _, key in SUMMARY_KEYS]
        rows.append(row)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
    for summary in summaries:
        print(f"{summary.stage}: {summary.output}")
        if summary.note:
            print(f"{summary.stage}: {summary.note}")
        if summary.skipped:
            print(f"{summary.stage}: {len(summary.skipped)} invalid input records skipped:")
            for message in summary.skipped[:10]:
                print(f"  {message}")


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_export(exported: dict, out: Path) -> None:
    counts = ", ".join(f"{key} {value}" for key, value in exported.items())
    print(f"export: {out} ({counts})")


if __name__ == "__main__":
    sys.exit(main())
