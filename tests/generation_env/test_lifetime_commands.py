"""No process outlives its command, as users run the commands: each is stopped once its
in-process vLLM engine(s) are up (SIGKILL, SIGTERM, or SIGINT to a background job that inherited
SIGINT ignored); within 10 s nothing it started is alive (its process tree is followed while it
runs: vLLM renames its processes, so no environment tag would find them); then the same command
runs to completion. The local Ray cluster's case is in test_ray_commands.py. Runs in .venv-vllm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eval.processbench.data import DEFAULT_DATA_DIR
from genprm.paths import default_model_path
from tests.support.paths import REPO
from tests.support.processes import ProcessTree, wait_for

pytestmark = pytest.mark.vllm

BIN = Path(sys.executable).parent
GSM8K = DEFAULT_DATA_DIR.parent / "gsm8k" / "test.jsonl"
ENGINE = ["--engine", "vllm", "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048"]
ENGINE_CORE = "VLLM::EngineCore"
START_S = 300
GONE_WITHIN_S = 10.0
# one KV cache of 1 GiB per engine: two engines fit beside CI's other work
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def stop_once_up(
    command: list[str], log: Path, signum: int, engines: int = 1, background: bool = False
):
    """Start ``command``, send ``signum`` once ``engines`` vLLM engine cores run below it, and
    check that nothing it started outlives it by 10 s. Its stderr goes to ``log`` (a pipe would
    be held open by whatever outlived it)."""

    def as_background_job():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=as_background_job if background else None,
        )
    tree = ProcessTree(process.pid)
    try:
        up = wait_for(lambda: len(tree.alive(ENGINE_CORE)) >= engines, START_S, 0.2)
        assert up and process.poll() is None, (process.poll(), tree.alive())
        process.send_signal(signum)
        process.wait(GONE_WITHIN_S)
    finally:
        process.kill()
        process.wait()
    stderr = log.read_text(errors="replace")
    assert wait_for(lambda: not tree.alive(), GONE_WITHIN_S), (tree.alive(), stderr[-2000:])
    tree.stop()
    assert len(tree.commands) > engines  # the tree was followed: engines, workers, watchdog
    if signum != signal.SIGKILL:
        assert process.returncode in (130, -signal.SIGKILL), stderr[-2000:]


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=START_S * 2
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_genprm_generate_sigkilled(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i} + {i} ="}) + "\n" for i in range(4)))
    output = tmp_path / "out.jsonl"
    command = [
        str(BIN / "genprm-generate"), "--input", str(prompts), "--output", str(output),
        "--max-tokens", "8", "--temperature", "0", "--batch-size", "2", *ENGINE,
    ]  # fmt: skip
    stop_once_up(command, tmp_path / "stopped.log", signal.SIGKILL)
    run(command)
    assert [line["index"] for line in read(output)] == [0, 1, 2, 3]


def test_genprm_eval_processbench_sigtermed(tmp_path):
    out = tmp_path / "pb"
    command = [
        str(BIN / "genprm-eval"), "processbench", "--data-dir", str(DEFAULT_DATA_DIR),
        "--splits", "gsm8k", "--limit", "2", "--mode", "direct", "--budget", "8",
        "--sandbox-workers", "1", "--out", str(out), *ENGINE,
    ]  # fmt: skip
    stop_once_up(command, tmp_path / "stopped.log", signal.SIGTERM)
    run(command)
    assert len(read(out / "predictions.jsonl")) == 2
    assert (out / "metrics.json").exists()


def test_genprm_eval_bon_with_a_policy_engine_sigkilled(tmp_path):
    out = tmp_path / "bon"
    command = [
        str(BIN / "genprm-eval"), "bon", "--input", str(GSM8K), "--limit", "1", "--n", "2",
        "--max-tokens", "48", "--mode", "direct", "--budget", "8", "--sandbox-workers", "1",
        "--policy-model", str(default_model_path()), "--out", str(out), *ENGINE,
    ]  # fmt: skip
    stop_once_up(command, tmp_path / "stopped.log", signal.SIGKILL, engines=2)
    run(command)
    assert sorted(s["id"] for s in read(out / "samples.jsonl")) == [
        "gsm8k-test-0-0", "gsm8k-test-0-1",
    ]  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["n"] == [1, 2]


def test_genprm_synth_run_sigint_as_a_background_job(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "cpu-default.yml").read_text())
    config["solve"].update(samples=2, rounds=1, max_tokens=96)
    config["rollout"].update(initial_k=2, k_hard=2, k_medium=2, k_easy=2, max_tokens=32)
    config["rationale"].update(max_tokens=64, max_code_rounds=1, judge_samples=1)
    config["sandbox"] = {"workers": 1}
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "synth"
    command = [
        str(BIN / "genprm-synth"), "run", str(path), "--input", str(GSM8K), "--limit", "1",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    stop_once_up(command, tmp_path / "stopped.log", signal.SIGINT, background=True)
    result = run(command)
    assert "export:" in result.stdout
    assert [line["id"] for line in read(out / "solve.jsonl.done.jsonl")] == ["gsm8k-test-0"]
    assert (out / "export" / "conversations.jsonl").exists()
