"""``--executor ray`` as users run it: the commands start a local Ray cluster with two actors,
each with its own vLLM CPU engine of the embedded model, and write the same files as the local
executor. One actor SIGKILLed mid-job (the job completes, nothing lost or written twice), and
the driver SIGKILLed (the same command resumes). Runs in .venv-vllm."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from eval.processbench.data import DEFAULT_DATA_DIR, load_splits
from tests.support.paths import REPO
from tests.support.processes import ProcessTree, wait_for

pytest.importorskip("ray")
pytestmark = pytest.mark.vllm

GSM8K = DEFAULT_DATA_DIR.parent / "gsm8k" / "test.jsonl"
ENGINE = ["--engine", "vllm", "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048"]
RAY = ["--executor", "ray", "--ray-actors", "2", "--ray-shard-size", "1"]
TIMEOUT_S = 600
GONE_WITHIN_S = 10.0
CLUSTER_FOLDERS = set(glob.glob("/tmp/gray-*"))  # local clusters' folders not ours to remove


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def environment(tag: str) -> dict[str, str]:
    """The command's environment, tagged: every process it starts (Ray's, the actors', vLLM's)
    inherits the tag, so the test can find them."""
    # a 1 GiB KV cache per engine: two engines and the local run's fit beside CI's other work
    return {**os.environ, "GENPRM_TEST_TAG": tag, "VLLM_CPU_KVCACHE_SPACE": "1"}


def tagged(tag: str, name: bytes = b"") -> list[int]:
    """Live processes carrying ``tag`` whose command line starts with ``name``."""
    found = []
    marker = f"GENPRM_TEST_TAG={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and command.startswith(name):
            found.append(int(entry))
    return found


def kill_tagged(tag: str) -> None:
    """What a SIGKILLed driver leaves behind: its cluster's processes (agents, vLLM workers)
    and folder."""
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for folder in set(glob.glob("/tmp/gray-*")) - CLUSTER_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def run(command: list[str], tag: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=REPO, env=environment(tag), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def small_config(folder: Path) -> Path:
    """configs/cpu-default.yml with one round of solve (4 samples of up to 192 tokens)."""
    config = yaml.safe_load((REPO / "configs" / "cpu-default.yml").read_text())
    config["solve"]["rounds"] = 1
    config["sandbox"] = {"workers": 1}
    path = folder / "small.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def solve(config: Path, out: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "data_synthesis.cli", "solve", "--input", str(GSM8K),
        "--limit", "4", "--output", str(out), "--config", str(config), "--no-progress",
        *ENGINE, *flags,
    ]  # fmt: skip


def processbench(out: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "eval.cli", "processbench", "--data-dir", str(DEFAULT_DATA_DIR),
        "--splits", "gsm8k", "--limit", "4", "--mode", "direct", "--budget", "24",
        "--sandbox-workers", "1", "--out", str(out), *ENGINE, *flags,
    ]  # fmt: skip


def test_a_synthesis_stage_on_ray_with_a_killed_actor_equals_the_local_run(tmp_path):
    tag = uuid.uuid4().hex
    config = small_config(tmp_path)
    local = tmp_path / "local" / "solve.jsonl"
    run(solve(config, local), tag)

    on_ray = tmp_path / "ray" / "solve.jsonl"
    ledger = on_ray.with_name("solve.jsonl.done.jsonl")
    driver = subprocess.Popen(
        solve(config, on_ray, *RAY), cwd=REPO, env=environment(tag),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: ledger.exists() and ledger.stat().st_size, timeout=TIMEOUT_S)
        actors = tagged(tag, b"ray::_Actor")
        finished_at_kill = len(ledger.read_text().splitlines())
        assert actors and finished_at_kill < 4, "the kill came too late to test a redo"
        os.kill(actors[0], signal.SIGKILL)
        _, stderr = driver.communicate(timeout=TIMEOUT_S)
        assert driver.returncode == 0, stderr[-3000:]
    finally:
        driver.kill()
        kill_tagged(tag)

    ids = [entry["id"] for entry in read(ledger)]
    assert sorted(ids) == sorted(entry["id"] for entry in read(local.with_name(ledger.name)))
    assert len(ids) == len(set(ids)) == 4  # every problem once
    records = read(on_ray)
    assert records  # seeded: the same solutions each time
    assert len({record["id"] for record in records}) == len(records)  # nothing written twice
    assert sorted(records, key=lambda r: r["id"]) == sorted(read(local), key=lambda r: r["id"])


def test_processbench_on_ray_resumes_after_the_driver_is_killed(tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "ray"
    predictions = out / "predictions.jsonl"
    command = processbench(out, *RAY)
    driver = subprocess.Popen(
        command, cwd=REPO, env=environment(tag), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tree = ProcessTree(driver.pid)
    try:
        assert wait_for(lambda: predictions.exists() and predictions.stat().st_size, TIMEOUT_S)
        assert tree.alive("ray::_Actor") and tree.alive("VLLM::EngineCore")
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # the local cluster (GCS, raylet, actors, their vLLM engines) goes with its driver
        assert wait_for(lambda: not tree.alive(), GONE_WITHIN_S), tree.alive()
    finally:
        tree.stop()
        driver.kill()
        kill_tagged(tag)
    before = predictions.read_bytes()
    assert 0 < len(before.splitlines()) < 4, "the kill came too late to test a resume"

    result = run(command, tag)
    kill_tagged(tag)
    assert f"{len(before.splitlines())} solutions already in" in result.stderr
    assert predictions.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # kept
    # the local executor's record set: one line per row of the slice, each once
    rows = load_splits(DEFAULT_DATA_DIR, ["gsm8k"], 4)["gsm8k"]
    lines = read(predictions)
    assert sorted((line["id"], line["label"]) for line in lines) == sorted(
        (row.id, row.label) for row in rows
    )
    assert all(len(line["step_rewards"]) > 0 for line in lines)
    assert (out / "metrics.json").exists() and (out / "report.md").exists()


def test_best_of_n_on_ray_samples_and_scores_every_sample_once(tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "bon"
    command = [
        sys.executable, "-m", "eval.cli", "bon", "--input", str(GSM8K), "--limit", "2",
        "--n", "2", "--max-tokens", "96", "--mode", "direct", "--budget", "16",
        "--sandbox-workers", "1", "--out", str(out), *ENGINE, *RAY,
    ]  # fmt: skip
    try:
        run(command, tag)
    finally:
        kill_tagged(tag)
    samples = read(out / "samples.jsonl")
    assert sorted(s["id"] for s in samples) == [
        f"gsm8k-test-{i}-{k}" for i in (0, 1) for k in (0, 1)
    ]
    assert all(isinstance(s["correct"], bool) for s in samples)  # graded in the actors
    scores = [line["id"] for line in read(out / "scores.jsonl")]
    assert sorted(scores) == sorted(s["id"] for s in samples if s["steps"])  # each once
    assert all(len(s["step_rewards"]) == len(s["steps"]) for s in samples)
    assert json.loads((out / "metrics.json").read_text())["n"] == [1, 2]
