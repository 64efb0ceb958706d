"""Sandbox latency and throughput against a fresh interpreter per snippet.

Per snippet, median and p95 wall-clock latency of (a) ``print(1)`` and (b) a sympy simplify,
each run four ways: through ``Sandbox(workers=1)`` (after one warm-up call; every snippet still
gets a fresh forked process), the same with ``bwrap=True`` (skipped without bwrap), in a fresh
``python -I -c`` subprocess (what a sandbox without a warm worker pays), and with in-process
``exec`` (no isolation at all; reference only, and warm after its first call for (b)). Then
``run_many`` throughput over ``print(1)``-style snippets with two workers vs one, and the
headline ratio "fresh interpreter / sandbox" for the sympy snippet (the target is at least 25x)
and what isolation costs, "sandbox / in-process exec" (the goal is at most 3x). Last, one path of
10 sympy blocks, each using the names of the one before (as a verifier's steps do): in one
session (``Sandbox.session()``) against replaying the earlier blocks before each one
(``run(code, prelude)``, what the verifier did before sessions), whole paths timed both ways in
the same run. Worker start-up is not timed. Well under 2 minutes on 2 cores:

    .venv/bin/python bench/bench_sandbox.py [--sandbox-runs 30] [--fresh-runs 10] [--batch 200]
        [--paths 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
import statistics
import subprocess
import sys
import time

from genprm.sandbox import Sandbox

SNIPPETS = {
    "print(1)": "print(1)",
    "sympy simplify": 'import sympy; print(sympy.simplify("x**2-1"))',
}
TARGET_RATIO = 25.0
# One path's blocks: each goes on from the names the one before it defined.
PATH_BLOCKS = [
    "import sympy\nx = sympy.Symbol('x')\nf0 = sympy.expand((x + 1) ** 6)\nprint(f0)",
    *(
        f"f{k} = sympy.expand(sympy.diff(f{k - 1}, x) * (x - {k}))\nprint(sympy.factor(f{k}))"
        for k in range(1, 10)
    ),
]
# Goal for what isolation costs: the sandbox at most this many times an in-process exec.
EXEC_GOAL = 3.0


def timed(call, code: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call(code)
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> str:
    p95 = sorted(times)[math.ceil(0.95 * len(times)) - 1]  # nearest rank
    median = statistics.median(times)
    return f"median {median * 1e3:8.1f} ms   p95 {p95 * 1e3:8.1f} ms   (n={len(times)})"


def check(result) -> None:
    if result.status != "ok":
        raise RuntimeError(f"snippet failed in the sandbox: {result.status}: {result.feedback}")


def fresh(code: str) -> None:
    subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True)


def in_process(code: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<bench>", "exec"), {"__name__": "__main__"})  # noqa: S102


def throughput(workers: int, batch: int) -> float:
    jobs = [(f"print({index})", ()) for index in range(batch)]
    with Sandbox(workers=workers) as sandbox:
        sandbox.run_many(jobs[:workers])  # warm-up
        started = time.perf_counter()
        results = sandbox.run_many(jobs)
        elapsed = time.perf_counter() - started
    for result in results:
        check(result)
    return batch / elapsed


def path_times(sandbox: Sandbox, paths: int) -> dict[str, list[float]]:
    """Seconds per whole path of PATH_BLOCKS, each way, alternating so that both see the same
    machine; both ways must print the same."""
    times: dict[str, list[float]] = {"session": [], "replay": []}
    for _ in range(paths):
        started = time.perf_counter()
        with sandbox.session() as session:
            kept = [session.run(block) for block in PATH_BLOCKS]
        times["session"].append(time.perf_counter() - started)
        started = time.perf_counter()
        replayed = [sandbox.run(block, PATH_BLOCKS[:k]) for k, block in enumerate(PATH_BLOCKS)]
        times["replay"].append(time.perf_counter() - started)
        for result in (*kept, *replayed):
            check(result)
        if [r.stdout for r in kept] != [r.stdout for r in replayed]:
            raise RuntimeError("the session and the replay printed different things")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox-runs", type=int, default=30, help="per snippet: sandbox, exec")
    parser.add_argument("--fresh-runs", type=int, default=10, help="per snippet: fresh interpreter")
    parser.add_argument("--batch", type=int, default=200, help="snippets per throughput run")
    parser.add_argument("--paths", type=int, default=5, help="10-block paths timed each way")
    args = parser.parse_args()

    medians: dict[tuple[str, str], float] = {}
    with contextlib.ExitStack() as stack:
        sandboxes = {"sandbox": stack.enter_context(Sandbox(workers=1))}
        if shutil.which("bwrap"):
            sandboxes["sandbox, bwrap"] = stack.enter_context(Sandbox(workers=1, bwrap=True))
        else:
            print("no bwrap on PATH: no bwrap row (apt-get install bubblewrap)")
        print(f"sandbox isolation: {sandboxes['sandbox'].isolation}\n")
        ways = {
            way: (lambda code, sandbox=sandbox: check(sandbox.run(code)), args.sandbox_runs)
            for way, sandbox in sandboxes.items()
        }
        ways["fresh interpreter"] = (fresh, args.fresh_runs)
        ways["in-process exec"] = (in_process, args.sandbox_runs)
        for name, code in SNIPPETS.items():
            for sandbox in sandboxes.values():
                check(sandbox.run(code))  # warm-up
            print(f"({name})  {code}")
            for way, (call, runs) in ways.items():
                times = timed(call, code, runs)
                medians[name, way] = statistics.median(times)
                note = "   reference only" if way == "in-process exec" else ""
                if note and "sympy" in code:
                    note += "; warm after its first call"
                print(f"  {way:18} {summary(times)}{note}")
            print()

    one, two = throughput(1, args.batch), throughput(2, args.batch)
    print(f"run_many throughput over {args.batch} print() snippets")
    print(f"  workers=1  {one:8.1f} snippets/s")
    print(f"  workers=2  {two:8.1f} snippets/s   ({two / one:.2f}x)\n")

    ratio = medians["sympy simplify", "fresh interpreter"] / medians["sympy simplify", "sandbox"]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"fresh interpreter / sandbox, sympy snippet (median): {ratio:.1f}x"
        f" -- {verdict} the {TARGET_RATIO:g}x target"
    )
    cost = medians["sympy simplify", "sandbox"] / medians["sympy simplify", "in-process exec"]
    verdict = "meets" if cost <= EXEC_GOAL else "misses"
    print(
        f"sandbox / in-process exec, sympy snippet (median): {cost:.1f}x"
        f" -- {verdict} the goal of at most {EXEC_GOAL:g}x"
    )

    with Sandbox(workers=1) as sandbox:
        path_times(sandbox, 1)  # warm-up
        times = path_times(sandbox, args.paths)
    print(f"\none path of {len(PATH_BLOCKS)} sympy blocks, each using the one before's names")
    for way, label in (("session", "one session"), ("replay", "replay earlier blocks")):
        per_block = statistics.median(times[way]) / len(PATH_BLOCKS)
        print(f"  {label:22} {summary(times[way])} per path   ({per_block * 1e3:.1f} ms a block)")
    ratio = statistics.median(times["replay"]) / statistics.median(times["session"])
    print(f"replay / session, whole path (median): {ratio:.1f}x")


if __name__ == "__main__":
    main()
