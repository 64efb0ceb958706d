"""``genprm-eval refine``: critique-refine (spec §7; paper §5.4, upstream
``src/prm_evaluation/policy_refine.py``).

    genprm-eval refine --engine openai --base-url http://node1:8000/v1 \\
        --policy-base-url http://node2:8000/v1 --input ../shared/data/math500/test.jsonl \\
        --out runs/refine
    genprm-eval refine --samples runs/bon/samples.jsonl --out runs/refine   # given solutions

The verifier (the engine flags, as for ``processbench``) scores each policy solution; the first
step it rejects (reward < 0.5) goes back to the policy with the verifier's critique of it, in
upstream's wording; the policy's new answer is split into paragraphs, scored again, and refined
again while a step is rejected, for at most ``--turns`` (3) turns. A solution with no rejected
step stands as it is. Each turn's conversation is the four §7 messages built afresh from the
current solution (not the previous turn's conversation continued).

Accuracy at turn k counts every problem's *current* solution after turn k: the one refined at
turn k where it was sent back, else the last one it had (a solution the verifier accepted, or
one that could not be scored, stands unchanged). Turn 0 is the policy's first solution.

Outputs in ``--out``: ``refine.jsonl`` (one line per problem, appended as problems finish; a
rerun skips them), ``metrics.json``, ``report.md``, ``accuracy_per_turn.png``, ``settings.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_synthesis.policy import AnswerGrader, policy_request
from data_synthesis.problems import ProblemFields, load_problems
from data_synthesis.stage import StageError
from data_synthesis.store import in_shard, parse_shard
from genprm.backends import Engine, EngineError, Sample, SamplingParams
from genprm.cli import (
    add_engine_arguments,
    add_policy_engine_arguments,
    engine_from_args,
    policy_engine_from_args,
    resolve_defaults,
)
from genprm.format import SYSTEM_POLICY
from genprm.grading import extract_boxed
from genprm.lifetime import command
from genprm.paths import write_atomically
from genprm.steps import split_paragraphs
from genprm.verifier import GenPRMVerifier

from .processbench import runner
from .processbench.runner import appender
from .verifier_args import (
    VERIFIER_DEFAULTS,
    add_verifier_arguments,
    make_verifier,
    verifier_settings,
)

# §7: the policy's system prompt (Qwen2.5-Instruct's default; --system-prompt for another
# policy), what follows the problem in the user turn, and the refine request before the quoted
# step. Sampling: temperature 0.7, top_p 0.8, top_k 20.
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
USER_SUFFIX = "\n\n" + SYSTEM_POLICY
REFINE_REQUEST = (
    "There might be some problem in this paragraph of your reasoning, please rethink and refine "
    "your answer:\n"
)
QUOTE = ">"
TEMPERATURE, TOP_P, TOP_K = 0.7, 0.8, 20
MAX_TURNS = 3
MAX_TOKENS = 4096  # the policy's tokens per answer (upstream: 16384)
EMBEDDED_MAX_TOKENS = 256  # on the embedded model (genprm.cli.resolve_defaults)

RESULTS = "refine.jsonl"
METRICS = "metrics.json"
REPORT = "report.md"
PLOT = "accuracy_per_turn.png"
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"
)
SAMPLE_ROWS = 20  # problems whose turns go to W&B

# -- prompts -------------------------------------------------------------------------------


def policy_messages(problem: str, system: str | None = QWEN_SYSTEM) -> list[dict]:
    """The policy's first two messages (§7): system (none when ``system`` is empty or None:
    the chat template's own default applies) and the problem with the step-by-step request."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": problem + USER_SUFFIX}]


def refine_messages(
    problem: str,
    steps: Sequence[str],
    index: int,
    critique: str,
    system: str | None = QWEN_SYSTEM,
) -> list[dict]:
    """The refine conversation of §7: the policy's solution as its own turn, then step
    ``index`` (0-based) quoted with the verifier's ``critique``."""
    return policy_messages(problem, system) + [
        {"role": "assistant", "content": "\n\n".join(steps)},
        {"role": "user", "content": REFINE_REQUEST + QUOTE + steps[index] + "\n\n" + critique},
    ]


def extract_critique(turn: str) -> str:
    """The verifier's assistant turn after its first ``:``, stripped; the whole turn, stripped,
    when it has none. A turn that starts with ANALYZE_PREFIX has its first ``:`` at the end of
    the prefix, so its critique is the analysis onward (verify and output sections included).

    >>> extract_critique("<analyze>\\nLet's analyze the Paragraph 2 step by step: 2+2 is 5: no.\\n")
    '2+2 is 5: no.'
    >>> extract_critique("no colon here ")
    'no colon here'

    Upstream (``extract_after_first_colon``) stops at ``</analyze>``; the spec keeps the rest.
    """
    _, colon, rest = turn.partition(":")
    return (rest if colon else turn).strip()


def policy_params(max_tokens: int = MAX_TOKENS, seed: int | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, max_tokens=max_tokens, seed=seed
    )


class Policy:
    """The policy model behind an engine: first solutions and refined ones (§7 prompts, sent
    as token ids of the model's own chat template with the generation prompt)."""

    def __init__(
        self,
        engine: Engine,
        system: str | None = QWEN_SYSTEM,
        max_tokens: int = MAX_TOKENS,
        seed: int | None = None,
    ):
        self.engine, self.system = engine, system
        self.params = policy_params(max_tokens, seed)

    async def answer(self, messages: list[dict]) -> Sample:
        """One sample for ``messages``; StageError when the prompt does not fit the context."""
        text = self.engine.apply_chat_template(messages, add_generation_prompt=True)
        completion = await self.engine.agenerate(policy_request(self.engine, text, self.params))
        return completion.samples[0]

    async def solve(self, problem: str) -> Sample:
        return await self.answer(policy_messages(problem, self.system))

    async def refine(self, problem: str, steps: Sequence[str], index: int, critique: str):
        return await self.answer(refine_messages(problem, steps, index, critique, self.system))


# -- the loop ------------------------------------------------------------------------------


@dataclass
class Refiner:
    """Scores, grades and refines one problem's solution at a time (many in flight)."""

    verifier: GenPRMVerifier
    policy: Policy
    grader: AnswerGrader
    max_turns: int = MAX_TURNS

    async def assess(self, problem: str, reference: str, text: str) -> tuple[dict, list[str]]:
        """A turn record for the solution ``text`` and the verifier's turns (its rationales).
        ``prediction``: the first rejected step (0-based), -1 for none, None when the solution
        could not be scored (``error`` says why)."""
        steps = split_paragraphs(text)
        final_answer = extract_boxed(text)
        grading = self.grader.correct([final_answer], reference)
        turn: dict[str, Any] = {"text": text, "steps": steps}
        if not steps:
            [correct] = await grading
            result_turns: list[str] = []
            turn.update(step_rewards=[], prediction=None, error="no text to score")
        else:
            scoring = self.verifier.ascore(problem, steps, stop_at_first_error=True)
            result, [correct] = await asyncio.gather(scoring, grading)
            result_turns = result.turns
            turn.update(step_rewards=result.rewards, prediction=result.prediction)
            if result.error is not None:
                turn["error"] = result.error
        turn.update(final_answer=final_answer, correct=correct)
        return turn, result_turns

    async def run(self, record: dict, text: str | None = None) -> dict:
        """The output line for one problem (``{"id", "problem", "answer"}``): its first
        solution (``text``, else the policy's) and every refinement, each scored and graded."""
        problem, reference = record["problem"], record["answer"]
        line: dict[str, Any] = {"id": record["id"], "answer": reference, "turns": []}
        first_finish = None
        if text is None:
            try:
                sample = await self.policy.solve(problem)
            except StageError as error:
                line["turns"].append(_unscored("", f"policy: {error}"))
                line["error"] = f"policy: {error}"
                return line
            text, first_finish = sample.text, sample.finish_reason
        turn, rationales = await self.assess(problem, reference, text)
        if first_finish is not None:
            turn["finish_reason"] = first_finish
        line["turns"].append(turn)
        for _ in range(self.max_turns):
            index = turn["prediction"]
            if index is None or index < 0:
                break  # accepted (or unscorable): the solution stands
            critique = extract_critique(rationales[index])
            try:
                sample = await self.policy.refine(problem, turn["steps"], index, critique)
            except StageError as error:
                line["error"] = f"policy: {error}"
                break
            turn, rationales = await self.assess(problem, reference, sample.text)
            turn.update(finish_reason=sample.finish_reason, refined_step=index, critique=critique)
            line["turns"].append(turn)
        return line


def _unscored(text: str, error: str) -> dict:
    return {
        "text": text,
        "steps": [],
        "step_rewards": [],
        "prediction": None,
        "final_answer": None,
        "correct": False,
        "error": error,
    }


async def refine_all(
    refiner: Refiner,
    records: list[dict],
    write: Callable[[bytes], None],
    progress: Callable[[dict], None] | None = None,
    concurrency: int = 64,
) -> None:
    """Refine every record (``{"id", "problem", "answer"}``, with ``"text"`` when the first
    solution is given), ``concurrency`` problems in flight; each line is written as its
    problem finishes."""
    bound = asyncio.Semaphore(concurrency)

    async def one(record: dict) -> None:
        async with bound:
            line = await refiner.run(record, record.get("text"))
        write((json.dumps(line, ensure_ascii=False) + "\n").encode())
        if progress is not None:
            progress(line)

    await asyncio.gather(*(one(record) for record in records))


# -- metrics and report --------------------------------------------------------------------


def refine_metrics(lines: list[dict], max_turns: int = MAX_TURNS) -> dict:
    """Per turn k = 0..max_turns: ``accuracy`` (percent of problems whose current solution
    after turn k is correct; one not sent back at turn k keeps its last solution),
    ``refined`` (solutions sent back to the policy at turn k), ``changed`` (of those, how
    many got another final answer than before), ``fixed`` / ``broken`` (wrong -> correct,
    correct -> wrong at turn k). Turn 0 is the first solution: 0 refined, changed, fixed,
    broken."""
    turns = list(range(max_turns + 1))
    metrics: dict[str, Any] = {"n": len(lines), "turns": turns}
    for key in ("accuracy", "changed", "refined", "fixed", "broken"):
        metrics[key] = []
    for k in turns:
        current = [line["turns"][min(k, len(line["turns"]) - 1)] for line in lines]
        correct = sum(bool(turn["correct"]) for turn in current)
        metrics["accuracy"].append(100.0 * correct / len(lines) if lines else 0.0)
        pairs = [
            (line["turns"][k - 1], line["turns"][k])
            for line in lines
            if k and len(line["turns"]) > k
        ]
        metrics["refined"].append(len(pairs))
        metrics["changed"].append(sum(a["final_answer"] != b["final_answer"] for a, b in pairs))
        metrics["fixed"].append(sum(not a["correct"] and b["correct"] for a, b in pairs))
        metrics["broken"].append(sum(a["correct"] and not b["correct"] for a, b in pairs))
    return metrics


def write_report(out: Path, metrics: dict, settings: dict, title: str, notes=()) -> None:
    """``metrics.json``, ``report.md`` and ``accuracy_per_turn.png`` in ``out``, atomically."""
    contents = {
        METRICS: (json.dumps(metrics, indent=2) + "\n").encode(),
        REPORT: _markdown(metrics, settings, title, list(notes)).encode(),
        PLOT: _chart_png(metrics, title),
    }
    for name, data in contents.items():
        write_atomically(out / name, data)


def _markdown(metrics: dict, settings: dict, title: str, notes: list[str]) -> str:
    lines = [f"# Critique-refine: {title}", "", f"{metrics['n']} problems.", ""]
    lines += ["| turn | accuracy (%) | refined | changed answer | wrong -> correct "
              "| correct -> wrong |", "|---" * 6 + "|"]  # fmt: skip
    for k in metrics["turns"]:
        lines.append(
            f"| {k} | {metrics['accuracy'][k]:.1f} | {metrics['refined'][k]} "
            f"| {metrics['changed'][k]} | {metrics['fixed'][k]} | {metrics['broken'][k]} |"
        )
    lines += [
        "",
        "Accuracy at turn k: every problem's current solution after turn k (one the verifier "
        "accepted, or could not score, stands unchanged). Refined: solutions sent back to the "
        "policy at turn k (their first step with reward < 0.5 and its critique). Changed "
        "answer: of those, the ones whose final answer differs from the previous turn's.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2, ensure_ascii=False, default=str),
        "```",
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _chart_png(metrics: dict, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(metrics["turns"], metrics["accuracy"], marker="o")
    for k, value in zip(metrics["turns"], metrics["accuracy"]):
        axes.annotate(f"{value:.1f}", (k, value), textcoords="offset points", xytext=(0, 6),
                      ha="center")  # fmt: skip
    axes.set_xticks(metrics["turns"])
    axes.set_ylim(0, 105)
    axes.set_xlabel("refine turn")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    return image.getvalue()


# -- resumable output folder ---------------------------------------------------------------


def start(out: Path, settings: dict) -> set[str]:
    """Prepare ``out`` for a run with ``settings``; the ids already in ``refine.jsonl`` (a torn
    last line, from a kill mid-write, is cut off). Another run's folder is refused."""
    return runner.start(
        out, settings, RESULTS, lambda path: [line["id"] for line in read_lines(path)]
    )


def read_lines(path: Path) -> list[dict]:
    """The lines of a ``refine.jsonl``; a bad one is a ValueError naming file and line."""
    lines = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if (
                not isinstance(line, dict)
                or not isinstance(line.get("id"), str)
                or not line.get("turns")
            ):
                raise ValueError(f"{path}:{number}: not a refine line (id, answer, turns)")
            lines.append(line)
    return lines


def read_samples(path: Path, limit: int | None = None) -> tuple[list[dict], int]:
    """The first solution of each problem in a samples file (``{"id", "problem", "answer",
    "text"}`` per line) and how many later solutions of a problem already read were left out
    (refine takes one solution per problem). A line with ``problem_id`` (Best-of-N's
    ``samples.jsonl``: N samples per problem, ids ``<problem id>-<k>``) is a solution of that
    problem, and the problem id is the record's id."""
    records: dict[str, dict] = {}
    repeated = 0
    with Path(path).open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object with id, problem, answer, text")
            for key in ("id", "problem", "answer", "text"):
                if not isinstance(row.get(key), str) or (key != "text" and not row[key]):
                    raise ValueError(f"{where}: `{key}` must be a string, got {row.get(key)!r}")
            problem_id = row.get("problem_id", row["id"])
            if not isinstance(problem_id, str) or not problem_id:
                raise ValueError(f"{where}: `problem_id` must be a string, got {problem_id!r}")
            if problem_id in records:
                repeated += 1
                continue
            if limit is not None and len(records) >= limit:
                continue
            records[problem_id] = {k: row[k] for k in ("problem", "answer", "text")}
            records[problem_id]["id"] = problem_id
    return list(records.values()), repeated


# -- command line --------------------------------------------------------------------------


def add_refine_parser(subparsers) -> argparse.ArgumentParser:
    """The ``refine`` subcommand of ``genprm-eval`` (``run_refine`` runs it)."""
    parser = subparsers.add_parser(
        "refine",
        help="critique-refine: the verifier's critique of the first wrong step goes back to "
        "the policy, up to 3 turns (accuracy per turn)",
        description="Critique-refine (spec §7): refine.jsonl, metrics.json, report.md and "
        f"{PLOT} in --out.",
    )
    parser.set_defaults(refine_parser=parser)  # engine_from_args reports flag errors with it
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--input",
        default=str(DEFAULT_DATA),
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
    return parser


def run_refine(args: argparse.Namespace) -> int:
    """Run ``genprm-eval refine`` from its parsed arguments; the exit status."""
    if args.turns < 0:
        args.refine_parser.error("--turns must be at least 0")
    return runner.as_only_writer(args, lambda: _run(args))


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
        return runner.nothing_selected(f"{args.samples or args.input}{shard}", args.limit)
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
    from tqdm import tqdm

    from genprm.sandbox import Sandbox

    engine = engine_from_args(args.refine_parser, args)
    policy_engine = None
    sandbox = None
    try:
        policy_engine = policy_engine_from_args(args.refine_parser, args, engine)
        sandbox = Sandbox(workers=args.sandbox_workers, bwrap=args.bwrap)
        verifier = make_verifier(args, engine, sandbox, args.seed)
        policy = Policy(policy_engine, args.system_prompt or None, args.max_tokens, args.seed)
        refiner = Refiner(verifier, policy, AnswerGrader(sandbox), args.turns)
        write = appender(args.out / RESULTS)
        bar = tqdm(total=len(pending), unit="problem", desc="refine", file=sys.stderr)
        refined = 0

        def progress(line: dict) -> None:
            nonlocal refined
            refined += len(line["turns"]) - 1
            bar.update(1)
            bar.set_postfix(refined=refined)

        started = time.monotonic()
        asyncio.run(refine_all(refiner, pending, write, progress, args.concurrency))
        bar.close()
        print(
            f"genprm-eval: {len(pending)} problems, {refined} refinements in "
            f"{time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
    finally:
        if sandbox is not None:
            sandbox.close()
        if policy_engine is not None and policy_engine is not engine:
            policy_engine.close()
        engine.close()


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

    run = wandb.init(project=args.wandb_project, config=settings, dir=str(args.out))
    try:
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
    finally:
        run.finish()


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m eval.refine ...``: the ``refine`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="genprm-eval", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_refine_parser(subparsers)
    args = parser.parse_args(argv)
    args.preset = resolve_defaults(args, args.defaults)
    return run_refine(args)


if __name__ == "__main__":
    sys.exit(main())
