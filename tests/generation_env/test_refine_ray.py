"""``genprm-eval refine --executor ray`` as a user runs it: the embedded model on a local Ray
cluster (one actor with its own vLLM CPU engine and sandbox) writes the ``refine.jsonl`` lines a
local run of the same command writes, and a rerun resumes from them. Runs in .venv-vllm."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.generation_env.test_ray_commands import (
    ENGINE,
    REPO,
    TIMEOUT_S,
    environment,
    kill_tagged,
    read,
)

pytest.importorskip("ray")
pytestmark = pytest.mark.vllm

# seeded: the policy writes the same first solutions on either executor
FLAGS = ["--limit", "2", "--max-tokens", "32", "--mode", "direct", "--budget", "16",
         "--sandbox-workers", "1", "--seed", "0", *ENGINE]  # fmt: skip
RAY = ["--executor", "ray", "--ray-actors", "1", "--ray-shard-size", "1"]


def refine(out, *flags: str) -> list[str]:
    return [sys.executable, "-m", "eval.cli", "refine", *FLAGS, "--out", str(out), *flags]


def test_refine_on_ray_writes_the_local_runs_lines_and_resumes(tmp_path):
    tag = uuid.uuid4().hex
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    # both at once: the engines start side by side (output to files: a full pipe would stall)
    logs = [(tmp_path / name).open("w") for name in ("local.log", "ray.log")]
    drivers = [
        subprocess.Popen(command, cwd=REPO, env=environment(tag), stdout=log, stderr=log)
        for command, log in zip((refine(local), refine(on_ray, *RAY)), logs)
    ]
    try:
        for driver, log in zip(drivers, logs):
            driver.wait(timeout=TIMEOUT_S)
            assert driver.returncode == 0, Path(log.name).read_text()[-3000:]
        assert "refined on 1 Ray actors" in Path(logs[1].name).read_text()
        before = (on_ray / "refine.jsonl").read_bytes()
        again = subprocess.run(refine(on_ray, *RAY), cwd=REPO, env=environment(tag),
                               capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        for driver, log in zip(drivers, logs):
            driver.kill()
            log.close()
        kill_tagged(tag)
    assert "2 problems already in" in again.stderr and "Ray actors" not in again.stderr
    assert (on_ray / "refine.jsonl").read_bytes() == before  # nothing left to do

    expected = sorted(read(local / "refine.jsonl"), key=lambda line: line["id"])
    lines = sorted(read(on_ray / "refine.jsonl"), key=lambda line: line["id"])
    assert [line["id"] for line in lines] == ["math500-test-0", "math500-test-1"]
    for line, local_line in zip(lines, expected):
        assert line.keys() == local_line.keys() and len(line["turns"]) == len(local_line["turns"])
        for turn, local_turn in zip(line["turns"], local_line["turns"]):
            assert turn.keys() == local_turn.keys()
            assert (turn["text"], turn["prediction"]) == (
                local_turn["text"],
                local_turn["prediction"],
            )
            # another batch on another core count: the same rewards but for rounding
            assert turn["step_rewards"] == pytest.approx(local_turn["step_rewards"], abs=1e-3)
    metrics = json.loads((on_ray / "metrics.json").read_text())
    assert metrics == json.loads((local / "metrics.json").read_text()) and metrics["n"] == 2
    assert (on_ray / "report.md").exists() and (on_ray / "accuracy_per_turn.png").exists()
