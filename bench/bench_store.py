"""Labelling 100,000 records: ``genprm-synth label`` against a plain loop over the same JSONL.

Both read one synthetic rollout-stage output (the records ``label`` reads: problem, five steps,
their MC scores and rollouts) in a temporary folder. Ours is the whole command in-process
(``data_synthesis.cli.main``, ``--no-progress``): the input checks, the resumable output with
its ledger and lock, the labels. The baseline is a loop that ``json.loads`` each line and
``json.dumps`` it to an output file, the least any stage must do. Prints both wall times and the
ratio (the goal is at most 2x), and the label stage's own computations on the same records
(exact fractions per MC score), timed alone, to tell them from the bookkeeping. The command's
cost per record must not grow with the output: the ratio stays flat as ``--records`` grows.

    .venv/bin/python bench/bench_store.py [--records 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

GOAL = 2.0


def rollout_record(index: int) -> dict:
    steps = [f"Step {k}: step {k} of solution {index}, working: {k} * 7." for k in range(1, 6)]
    return {
        "id": f"problem-{index // 4}-{index % 4}",
        "problem_id": f"problem-{index // 4}",
        "problem": f"Problem {index // 4}: " + "a word problem about apples and boxes " * 5,
        "answer": "42",
        "steps": steps,
        "correct": index % 2 == 0,
        "mc": [0.75, 0.5, 0.5, 0.25, float(index % 2 == 0)],
        "mc_initial": 0.75,
        "rollouts": [64, 64, 64, 64, 0],
        "k": 64,
    }


def plain_loop(source: Path, target: Path) -> None:
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")


def ours(source: Path, target: Path) -> None:
    from data_synthesis.cli import main

    argv = ["label", "--input", str(source), "--output", str(target), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"genprm-synth label exited {status}")


def labels_alone(source: Path) -> float:
    from data_synthesis.label import LabelSettings, LabelStage

    stage = LabelStage(LabelSettings())
    records = [json.loads(line) for line in source.open(encoding="utf-8")]
    started = time.perf_counter()

    async def every() -> None:
        for record in records:
            await stage.process(record)

    asyncio.run(every())
    return time.perf_counter() - started


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    import data_synthesis.cli  # noqa: F401 - imported before timing, as a command's start-up

    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
        folder = Path(scratch)
        source = folder / "rollout.jsonl"
        with source.open("w", encoding="utf-8") as out:
            for index in range(args.records):
                out.write(json.dumps(rollout_record(index)) + "\n")
        size = source.stat().st_size
        baseline = timed(plain_loop, source, folder / "plain.jsonl")
        label = timed(ours, source, folder / "label.jsonl")
        written = (folder / "label.jsonl").read_bytes().count(b"\n")
        if written != args.records:
            raise RuntimeError(f"label wrote {written} records of {args.records}")
        computing = labels_alone(source)

    print(f"{args.records} records ({size / 1e6:.1f} MB of JSONL)")
    print(f"genprm-synth label --no-progress   {label:8.2f} s")
    print(f"plain json.loads/json.dumps loop   {baseline:8.2f} s")
    verdict = "meets" if label / baseline <= GOAL else "misses"
    print(f"ratio: {label / baseline:.2f}x ({verdict} the goal of at most {GOAL:g}x)")
    rest = label - computing
    print(
        f"of which the label stage's own computations {computing:.2f} s; the rest (reading, "
        f"checks, records, ledger, driver) {rest:.2f} s = {rest / baseline:.2f}x the loop"
    )


if __name__ == "__main__":
    main()
