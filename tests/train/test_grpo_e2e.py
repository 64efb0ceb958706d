"""End to end, as a user runs it: GSM8K problems -> ``python -m genprm_train.grpo`` -> ``axolotl
train`` of the GRPO CPU config (the embedded SmolLM2 as the policy) with ``genprm_reward``
scoring every completion on a real vLLM CPU server (the embedded model as the verifier),
W&B offline."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO, SHARED_DATA

BIN = Path(sys.executable).parent
GRPO_CONFIG = REPO / "axolotl_configs" / "genprm-grpo-smollm2-cpu.yml"
GSM8K = SHARED_DATA / "gsm8k" / "train.jsonl"
STEPS = 2

pytestmark = [pytest.mark.slow, pytest.mark.vllm_server]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WANDB_DIR": str(cwd)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    )
    return result


def test_grpo_steps_with_a_served_genprm_reward(
    tmp_path, smollm2_path, vllm_servers, vllm_api_key, read_wandb_run
):
    data = tmp_path / "grpo.jsonl"
    made = run([str(BIN / "python"), "-m", "genprm_train.grpo", str(GSM8K), str(data),
                "--limit", "4"], tmp_path)  # fmt: skip
    assert "wrote 4 prompts" in made.stderr

    cfg = yaml.safe_load(GRPO_CONFIG.read_text())
    cfg.update(
        base_model=str(smollm2_path),
        datasets=[{**cfg["datasets"][0], "path": str(data)}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
    )
    cfg["genprm_reward"].update(base_urls=[vllm_servers[0].base_url], retries=2, timeout_s=600)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(cfg))
    run([str(BIN / "axolotl"), "train", str(config)], tmp_path)

    [run_dir] = sorted((tmp_path / "wandb").glob("offline-run-*"))
    history, _ = read_wandb_run(run_dir)
    for key in ("train/reward", "train/rewards/genprm_reward/mean", "train/genprm/process_reward"):
        values = history.get(key, [])
        assert len(values) == STEPS and all(math.isfinite(v) for v in values), (key, values)
    # process reward (min of step rewards in [0, 1]) plus an outcome term of 0 or 1
    assert all(0.0 <= v <= 2.0 for v in history["train/rewards/genprm_reward/mean"])
    assert all(0.0 <= v <= 1.0 for v in history["train/genprm/process_reward"])
