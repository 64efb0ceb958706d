"""Rollout cost with the early stop against rolling out every step, on the same solutions with the
same vLLM CPU engine, in one run; and what the stage driver adds over the engine's own time.

GSM8K problems are solved by the embedded policy (the solve stage), then every solution goes
through the rollout stage twice, as ``genprm-synth rollout`` runs it (the driver, its output
files): (a) with ``early_stop`` (no rollouts after a step with MC = 0), (b) without. Both share
one MC(s_0) per problem (one cache file) and the same seed. Printed: generated tokens per
labelled solution of each, the ratio (a)/(b) (target <= 0.7x), whether the first-error indices
under relative-progress labels (spec §5) agree, and (a)'s wall time over the time the engine had
work in flight (``engine.counters``; target <= 1.10x: grading in the sandbox, files and asyncio
add at most 10%). A few minutes on 2 cores with the defaults:

    .venv-vllm/bin/python bench/bench_rollout.py [--problems 4] [--k 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from data_synthesis.label import first_error, rpe_labels
from data_synthesis.rollout import RolloutSettings, RolloutStage
from data_synthesis.runner import run_stage
from data_synthesis.solve import SolveSettings, SolveStage
from genprm.backends import make_engine
from genprm.problems import load_problems
from genprm.sandbox import Sandbox

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
TARGET_RATIO = 0.7
OVERHEAD_GOAL = 1.10
EPSILON = 0.8


def rpe_first_error(record: dict) -> int:
    return first_error(rpe_labels(record["mc"], record["mc_initial"], EPSILON))


async def each(stage, records: list[dict]) -> list[dict]:
    results = await asyncio.gather(*map(stage.process, records))
    return [out for result in results for out in result.records]


def label_twice(engine, sandbox, solutions, args, scratch: Path) -> dict:
    """early_stop -> (labelled solutions, wall seconds, engine-busy seconds); the first run
    computes MC(s_0) into a cache file, the second reads it."""
    runs = {}
    cache = scratch / "mc_initial.jsonl"
    k = dict(initial_k=args.k, k_hard=args.k, k_medium=args.k, k_easy=args.k)
    for early_stop in (True, False):
        settings = RolloutSettings(**k, max_tokens=args.max_tokens, early_stop=early_stop, seed=0)
        output = scratch / f"rollout-{early_stop}.jsonl"
        busy = engine.counters.wall_s
        started = time.perf_counter()
        run_stage(RolloutStage(engine, sandbox, settings, cache), solutions, output, progress=False)
        wall = time.perf_counter() - started
        labelled = [json.loads(line) for line in output.read_text().splitlines()]
        runs[early_stop] = (labelled, wall, engine.counters.wall_s - busy)
    return runs


def report(runs: dict, initial_tokens: int) -> None:
    per_solution = {}
    for early_stop, (labelled, wall, _) in runs.items():
        steps_tokens = sum(s["rollout_tokens"] for s in labelled)
        total = (steps_tokens + initial_tokens) / len(labelled)
        per_solution[early_stop] = (total, steps_tokens / len(labelled))
        name = "early stop" if early_stop else "every step"
        print(
            f"  {name:10}  {wall:6.1f} s   {sum(sum(s['rollouts']) for s in labelled):5d} rollouts"
            f"   {total:8.1f} tokens per labelled solution"
            f" ({steps_tokens / len(labelled):.1f} in step rollouts,"
            f" {initial_tokens / len(labelled):.1f} in MC(s_0))"
        )
    print("  (the early-stop run's wall time includes computing MC(s_0), which both use)")
    ratio = per_solution[True][0] / per_solution[False][0]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"early stop / every step, tokens per labelled solution: {ratio:.2f}x -- {verdict}"
        f" the {TARGET_RATIO}x target (step rollouts alone:"
        f" {per_solution[True][1] / max(per_solution[False][1], 1e-9):.2f}x)"
    )
    baseline = runs[False][0]
    mc_initial = {s["problem_id"]: s["mc_initial"] for s in baseline}
    positive = sum(mc > 0 for s in baseline for mc in s["mc"][:-1])
    print(
        f"MC(s_0) by problem: {mc_initial}; steps rolled out with MC > 0 without the early"
        f" stop: {positive} of {sum(len(s['steps']) - 1 for s in baseline)}"
    )
    by_id = {record["id"]: record for record in baseline}
    pairs = [(rpe_first_error(a), rpe_first_error(by_id[a["id"]])) for a in runs[True][0]]
    agree = sum(a == b for a, b in pairs)
    print(
        f"first-error indices (RPE labels) agree on {agree} of {len(pairs)} solutions"
        f" -- {'agree' if agree == len(pairs) else 'DISAGREE'}: {pairs}"
    )
    _, wall, busy = runs[True]
    overhead = wall / busy if busy else float("inf")
    verdict = "meets" if overhead <= OVERHEAD_GOAL else "MISSES"
    print(
        f"rollout stage through the driver (early stop): {wall:.1f} s wall, engine busy"
        f" {busy:.1f} s: {overhead:.2f}x -- {verdict} the {OVERHEAD_GOAL:.2f}x goal"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4, help="the first N GSM8K problems")
    parser.add_argument("--k", type=int, default=8, help="rollouts per step and for MC(s_0)")
    parser.add_argument("--max-tokens", type=int, default=128, help="per rollout")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    problems, _ = load_problems(str(GSM8K), limit=args.problems)
    engine = make_engine("vllm", enforce_eager=True, dtype="float32", max_model_len=2048)
    try:
        with Sandbox(workers=2) as sandbox, tempfile.TemporaryDirectory() as scratch:
            solve = SolveStage(engine, sandbox, SolveSettings(rounds=2, max_tokens=384, seed=0))
            started = time.perf_counter()
            solutions = asyncio.run(each(solve, problems))
            solve_s = time.perf_counter() - started
            if not solutions:
                raise SystemExit("the policy wrote no valid solution: nothing to label")
            runs = label_twice(engine, sandbox, solutions, args, Path(scratch))
            initial_tokens = sum(
                json.loads(line)["tokens"]
                for line in (Path(scratch) / "mc_initial.jsonl").read_text().splitlines()
            )
    finally:
        engine.close()

    correct = sum(s["correct"] for s in solutions)
    print(
        f"{len(problems)} GSM8K problems -> {len(solutions)} solutions ({correct} correct,"
        f" {sum(len(s['steps']) for s in solutions)} steps) in {solve_s:.0f} s;"
        f" K = {args.k}, max_tokens {args.max_tokens}"
    )
    report(runs, initial_tokens)


if __name__ == "__main__":
    main()
