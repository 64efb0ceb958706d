"""The batched GenPRM verifier against upstream's order, on the same ProcessBench rows with the
same vLLM CPU engine, in one run.

(a) batched: ``GenPRMVerifier.score_many``, every solution and step in flight at once;
(b) upstream's order: one solution at a time, one step at a time (``concurrency=1``);
(c) adaptive: (a) in ``--mode adaptive`` (direct, then cot, then cot+code while a step's reward
    is ambiguous), for its verifier tokens per step beside (a)'s.
All use the embedded model, the sandbox, Maj@N, the same seed and stop at the first wrong step,
as ProcessBench does; (a) and (b) are ``cot+code``. Printed: wall time and generated tokens of
each, the ratio (b)/(a) (target >= 3x), the share of (a)'s wall time the engine was busy
(``engine.counters``; target: orchestration and the sandbox add <= 10% over the engine's own
time), and the tokens per step of (c) against (a) with the levels that decided (c)'s steps.
With one row per split the slowest solution bounds the batched run and the ratio is lower
(1.9x measured); the default of four rows per split takes 10-20 minutes on 2 cores:

    .venv-vllm/bin/python bench/bench_verifier.py [--rows 4] [--budget 64] [--maj 1]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from eval.processbench.data import DEFAULT_DATA_DIR, SPLITS, load_splits
from genprm.backends import make_engine
from genprm.sandbox import Sandbox
from genprm.verifier import ADAPTIVE_LEVELS, GenPRMVerifier

TARGET_RATIO = 3.0
OVERHEAD_GOAL = 0.10


def timed(verifier: GenPRMVerifier, engine, items) -> tuple[float, float, int, int, Counter]:
    """Wall seconds, engine-busy seconds, generated tokens, steps scored and (adaptive) the
    levels that decided them."""
    before = engine.counters
    started = time.perf_counter()
    results = verifier.score_many(items, stop_at_first_error=True)
    wall = time.perf_counter() - started
    after = engine.counters
    steps = sum(len(result.rewards) for result in results)
    tokens = after.generated_tokens - before.generated_tokens
    levels = Counter(level for result in results for level in result.levels or ())
    return wall, after.wall_s - before.wall_s, tokens, steps, levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4, help="the first N rows of each split")
    parser.add_argument("--budget", type=int, default=64, help="assistant tokens per step")
    parser.add_argument("--maj", type=int, default=1)
    args = parser.parse_args()

    rows = load_splits(DEFAULT_DATA_DIR, SPLITS, args.rows)
    items = [(row.problem, row.steps) for split in rows.values() for row in split]
    engine = make_engine("vllm", enforce_eager=True, dtype="float32", max_model_len=4096)
    try:
        with Sandbox(workers=2) as sandbox:
            settings = dict(maj=args.maj, budget=args.budget, seed=0)
            batched = GenPRMVerifier(engine, sandbox, **settings)
            one_by_one = GenPRMVerifier(engine, sandbox, concurrency=1, **settings)
            adaptive = GenPRMVerifier(engine, sandbox, mode="adaptive", **settings)
            timed(batched, engine, items[:1])  # warm-up: compiled kernels, sandbox workers
            ours = timed(batched, engine, items)
            theirs = timed(one_by_one, engine, items)
            cheap = timed(adaptive, engine, items)
    finally:
        engine.close()

    print(f"{len(items)} solutions ({args.rows} per split), budget {args.budget}, Maj@{args.maj}")
    runs = (("batched", ours), ("upstream's order", theirs), ("adaptive, batched", cheap))
    for name, (wall, busy, tokens, steps, _) in runs:
        print(
            f"  {name:17} {wall:7.1f} s   {steps:4d} steps   {tokens:6d} tokens"
            f"   {tokens / wall:6.1f} tokens/s   engine busy {busy / wall:5.1%}"
        )
    ratio = theirs[0] / ours[0]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"upstream's order / batched, wall time: {ratio:.2f}x -- {verdict} the 3x target")
    overhead = ours[0] / ours[1] - 1 if ours[1] else float("inf")
    verdict = "meets" if overhead <= OVERHEAD_GOAL else "misses"
    print(
        f"batched: wall time over engine-busy time {overhead:+.1%} -- {verdict} the goal of"
        f" at most +{OVERHEAD_GOAL:.0%}"
    )
    code_per_step, adaptive_per_step = (run[2] / run[3] for run in (ours, cheap))
    decided = ", ".join(f"{level} {cheap[4][level]}" for level in ADAPTIVE_LEVELS)
    print(
        f"verifier tokens per step: cot+code {code_per_step:.1f}, adaptive "
        f"{adaptive_per_step:.1f} ({adaptive_per_step / code_per_step:.2f}x); adaptive's steps "
        f"decided by: {decided}"
    )


if __name__ == "__main__":
    main()
