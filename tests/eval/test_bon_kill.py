"""``genprm-eval bon`` killed with SIGKILL while it scores, then the same command again: it
completes, and what was written before the kill is kept (no sample generated again, no sample
scored twice)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eval.bon.runner import SCORES
from eval.bon.samples import SAMPLES
from genprm.aggregate import AGGREGATIONS
from tests.support.paths import REPO, SHARED_DATA
from tests.support.processes import wait_for

GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
PROBLEMS, N = 1, 4


def bon_command(base_url: str, out: Path) -> list[str]:
    # One sample scored at a time (--concurrency 1), several steps each: the first score line
    # comes well before the last, so the kill lands mid-scoring.
    return [
        sys.executable, "-m", "eval.cli", "bon", "--engine", "openai", "--base-url", base_url,
        "--input", str(GSM8K), "--limit", str(PROBLEMS), "--n", str(N), "--mode", "cot",
        "--budget", "48", "--max-tokens", "96", "--concurrency", "1", "--sandbox-workers", "1",
        "--out", str(out),
    ]  # fmt: skip


def complete_lines(path: Path) -> bytes:
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def without_scores(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k not in ("step_rewards", "score_error")}


@pytest.mark.vllm_server
def test_kill_9_while_scoring_then_the_same_command_completes(vllm_servers, vllm_api_key, tmp_path):
    out = tmp_path / "bon"
    command = bon_command(vllm_servers[0].base_url, out)
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    try:
        wait_for(
            lambda: first.poll() is not None or complete_lines(out / SCORES).count(b"\n") >= 1,
            timeout=900,
            interval=0.05,
        )
        ended = first.poll()
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already where the run ended
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    hint = ": make the workload bigger" if ended == 0 else ""
    assert ended is None, (
        f"the first run ended (exit {ended}) before it could be killed{hint}\n"
        f"{log.read_text()[-3000:]}"
    )
    scored_before = complete_lines(out / SCORES)
    kept = scored_before.count(b"\n")
    samples_before = sorted(records(complete_lines(out / SAMPLES)), key=lambda s: s["id"])
    assert kept >= 1, "no score line within 900 s"
    assert len(samples_before) == PROBLEMS * N, "scoring starts once every problem is sampled"
    to_score = sum(bool(sample["steps"]) for sample in samples_before)
    assert kept < to_score, (
        "every sample was scored before the kill: nothing was left to resume (the kill came "
        "too late; make the workload bigger)"
    )

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    resumed = f"resuming {out}: {PROBLEMS} problems already sampled, {kept} samples already"
    assert resumed in done.stderr
    scored_after = (out / SCORES).read_bytes()
    assert scored_after.startswith(scored_before)  # lines finished before the kill: unchanged
    ids = [line["id"] for line in records(scored_after)]
    assert len(ids) == len(set(ids)) == to_score  # every sample with steps, scored once
    samples_after = sorted(records((out / SAMPLES).read_bytes()), key=lambda s: s["id"])
    assert [without_scores(s) for s in samples_after] == samples_before  # none generated again
    rewards = {line["id"]: line["step_rewards"] for line in records(scored_after)}
    for sample in samples_after:
        assert sample["step_rewards"] == rewards.get(sample["id"], [])
        assert len(sample["step_rewards"]) == len(sample["steps"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"n", "pass_at_n", "majority", "best_of_n"} <= set(metrics)
    assert metrics["n"] == [1, 2, 4]
    assert set(metrics["best_of_n"]) == set(AGGREGATIONS) == {"last", "min", "mean", "product"}
    for values in [metrics["pass_at_n"], metrics["majority"], *metrics["best_of_n"].values()]:
        assert len(values) == 3 and all(0.0 <= value <= 100.0 for value in values)
