"""Best-of-N scoring, batched against one sample at a time, on the same policy samples with the
same vLLM CPU engine, in one run.

A few MATH-500 problems x N policy samples are generated once (the embedded model, seeded),
then every step of every sample is scored with the GenPRM verifier (seed 0):
(a) batched: ``ascore_many`` with every sample in flight at once (the N samples of a problem
    share its prompt prefix, which the engine's prefix cache serves);
(b) one sample at a time: the same verifier with ``concurrency=1``.
Printed: wall time, steps and generated tokens of each, and the ratio (b)/(a) (target >= 3x).
Measured on 2 cores: 2 x 16 samples 4.19x (79 s vs 330 s, about 7 minutes in all); 2 x 8
samples 2.64x (on a machine busy with another vLLM run).

    .venv-vllm/bin/python bench/bench_bon.py [--problems 2] [--n 16] [--mode cot] [--budget 32]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from eval.bon import samples as bon_samples
from eval.processbench.data import DEFAULT_DATA_DIR
from genprm.backends import make_engine
from genprm.policy import AnswerGrader
from genprm.problems import ProblemFields, load_problems
from genprm.sandbox import Sandbox
from genprm.verifier import CODE_MODES, MODES, GenPRMVerifier

TARGET_RATIO = 3.0
MATH500 = DEFAULT_DATA_DIR.parent / "math500" / "test.jsonl"


def timed(verifier: GenPRMVerifier, engine, items) -> tuple[float, int, int]:
    """Wall seconds, generated tokens and steps scored (every step of every sample)."""
    before = engine.counters
    started = time.perf_counter()
    results = verifier.score_many(items, stop_at_first_error=False)
    wall = time.perf_counter() - started
    steps = sum(len(result.rewards) for result in results)
    return wall, engine.counters.generated_tokens - before.generated_tokens, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=2, help="the first P MATH-500 problems")
    parser.add_argument("--n", type=int, default=16, help="policy samples per problem")
    parser.add_argument("--max-tokens", type=int, default=160, help="policy tokens per sample")
    parser.add_argument("--mode", choices=MODES, default="cot")
    parser.add_argument("--budget", type=int, default=32, help="verifier tokens per step")
    parser.add_argument("--maj", type=int, default=1)
    args = parser.parse_args()

    problems, _ = load_problems(str(MATH500), ProblemFields(), args.problems)
    engine = make_engine("vllm", enforce_eager=True, dtype="float32", max_model_len=4096)
    try:
        with Sandbox(workers=2) as sandbox:
            params = bon_samples.policy_params(args.n, 0.7, args.max_tokens, 0)
            generated = asyncio.run(
                bon_samples.generate(engine, problems, params, AnswerGrader(sandbox), lambda _: 0)
            )
            items = [(s["problem"], s["steps"]) for s in generated if s["steps"]]
            settings = dict(mode=args.mode, maj=args.maj, budget=args.budget, seed=0)
            code = sandbox if args.mode in CODE_MODES else None
            batched = GenPRMVerifier(engine, code, concurrency=len(items), **settings)
            one_by_one = GenPRMVerifier(engine, code, concurrency=1, **settings)
            timed(batched, engine, items[:1])  # warm-up
            ours = timed(batched, engine, items)
            theirs = timed(one_by_one, engine, items)
    finally:
        engine.close()

    print(
        f"{len(problems)} problems x {args.n} samples = {len(items)} scored samples "
        f"({len(generated) - len(items)} empty), mode {args.mode}, budget {args.budget}, "
        f"Maj@{args.maj}"
    )
    for name, (wall, tokens, steps) in (("batched", ours), ("one at a time", theirs)):
        print(
            f"  {name:14} {wall:7.1f} s   {steps:4d} steps   {tokens:6d} tokens"
            f"   {tokens / wall:6.1f} tokens/s"
        )
    ratio = theirs[0] / ours[0]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"one at a time / batched, wall time: {ratio:.2f}x -- {verdict} the 3x target")


if __name__ == "__main__":
    main()
