"""End to end, as a user runs it: ``axolotl preprocess`` + ``axolotl train`` on the CPU config
with the embedded SmolLM2 checkpoint, full fine-tuning, LoRA and sample packing, W&B offline."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genprm.format import CodeBlock, render_rationale
from genprm_train.conversation_count import METRIC as CONVERSATIONS
from tests.support.paths import REPO

BIN = Path(sys.executable).parent
CPU_CONFIG = REPO / "axolotl_configs" / "genprm-smollm2-cpu.yml"
STEPS = 10

pytestmark = pytest.mark.slow


def short_records(processbench: list[dict]) -> list[dict]:
    """Six short ProcessBench solutions as direct-mode records and two rationale records with
    executed code, so the run covers both assistant-turn shapes and code-output masking."""
    short = sorted(processbench, key=lambda r: len(r["problem"]) + sum(map(len, r["steps"])))[:6]
    records = [
        {"id": r["id"], "problem": r["problem"], "steps": r["steps"], "label": r["label"]}
        for r in short
    ]
    for index, record in enumerate(short[:2]):
        steps = record["steps"][:2]
        rationales = [
            render_rationale(
                t + 1,
                "Check the arithmetic.",
                [CodeBlock(f"print({t} + {index})", str(t + index))],
                True,
            )
            for t in range(len(steps))
        ]
        records.append(
            {
                "id": f"cot-{index}",
                "problem": record["problem"],
                "steps": steps,
                "rationales": rationales,
            }
        )
    return records


def write_config(tmp: Path, model: Path, data: Path, **overrides) -> Path:
    cfg = yaml.safe_load(CPU_CONFIG.read_text())
    cfg.update(
        base_model=str(model),
        datasets=[{**cfg["datasets"][0], "path": str(data)}],
        dataset_prepared_path=str(tmp / "prepared"),
        output_dir=str(tmp / "out"),
        sequence_len=512,
        max_steps=STEPS,
        save_steps=STEPS,
        warmup_steps=1,
    )
    cfg.update(overrides)
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def axolotl(command: str, config: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WANDB_DIR": str(cwd)}
    result = subprocess.run(
        [str(BIN / "axolotl"), command, str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, (
        f"axolotl {command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    )
    return result


def logged(output_dir: Path, key: str, steps: int = STEPS) -> list[float]:
    """``key`` at each logged step, from the last checkpoint's ``trainer_state.json``."""
    state = json.loads((output_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


def wandb_run(cwd: Path) -> Path:
    runs = sorted((cwd / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run in {cwd / 'wandb'}"
    return runs[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, processbench_gsm8k) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in short_records(processbench_gsm8k)))
    return path


def test_full_finetune_preprocess_then_train(tmp_path, smollm2_path, dataset, read_wandb_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = write_config(tmp_path, smollm2_path, dataset, learning_rate=1.0e-4)
    axolotl("preprocess", config, tmp_path)
    assert any((tmp_path / "prepared").iterdir())
    run = axolotl("train", config, tmp_path)

    losses = logged(tmp_path / "out", "loss")
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0], f"loss did not drop clearly: {losses}"

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = tokenizer("<output>\n**Judgement**: $\\boxed{Yes}$", return_tensors="pt")
    assert math.isfinite(model(**batch, labels=batch["input_ids"]).loss.item())

    # Unpacked, every row is one conversation: micro batch x accumulation (x 1 process).
    cfg = yaml.safe_load(config.read_text())
    micro, accumulation = cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]
    conversations = logged(tmp_path / "out", CONVERSATIONS)
    assert conversations == [micro * accumulation] * STEPS
    assert (
        f"genprm: {micro * accumulation} conversations per optimizer step (micro batch {micro} "
        f"x accumulation {accumulation} x 1 process)"
    ) in run.stdout + run.stderr

    history, summary = read_wandb_run(wandb_run(tmp_path))
    assert history["train/loss"] == pytest.approx(losses)
    assert history[f"train/{CONVERSATIONS}"] == conversations
    assert summary["genprm/samples"] == 8
    assert 0 < summary["genprm/no_share"] < 1 and summary["genprm/masked_token_share"] > 0.5


def test_lora_train(tmp_path, smollm2_path, dataset, read_wandb_run):
    from peft import AutoPeftModelForCausalLM

    config = write_config(
        tmp_path,
        smollm2_path,
        dataset,
        adapter="lora",
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lora_target_linear=True,
        # axolotl's LoRA Triton kernels assert CUDA
        lora_mlp_kernel=False,
        lora_qkv_kernel=False,
        lora_o_kernel=False,
        learning_rate=2.0e-3,
    )
    axolotl("train", config, tmp_path)

    losses = logged(tmp_path / "out", "loss")
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.7 * losses[0], f"loss did not drop clearly: {losses}"
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out")
    # Counted on the PEFT wrapper's forward: micro batch x accumulation conversations a step.
    cfg = yaml.safe_load(config.read_text())
    per_step = cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"]
    assert logged(tmp_path / "out", CONVERSATIONS) == [per_step] * STEPS
    history, _ = read_wandb_run(wandb_run(tmp_path))
    assert history["train/loss"] == pytest.approx(losses)


def test_packed_train_counts_the_conversations_in_each_row(
    tmp_path, smollm2_path, smollm2_tokenizer, processbench_gsm8k, read_wandb_run
):
    """With sample packing a row holds several conversations and the logged count is theirs.
    Every record is the same conversation (copies of one short solution under new ids), so
    first-fit packing puts exactly sequence_len // its length into each row, and with enough
    records for whole steps every step holds that times micro batch x accumulation. The rows
    are padded past their last conversation: padding must not count as one."""
    from genprm_train.prompt_strategy import GenPRMPromptStrategy

    record = short_records(processbench_gsm8k)[0]
    strategy = GenPRMPromptStrategy(smollm2_tokenizer, smollm2_tokenizer.chat_template)
    length = len(strategy.tokenize_row(record)["input_ids"])
    sequence_len = 3 * length + length // 2  # room for 3, and padding after them
    micro, accumulation, steps = 2, 1, 2
    per_step = sequence_len // length * micro * accumulation
    data = tmp_path / "packed.jsonl"
    copies = [{**record, "id": f"{record['id']}-{n}"} for n in range(per_step * steps)]
    data.write_text("".join(json.dumps(r) + "\n" for r in copies))
    config = write_config(
        tmp_path,
        smollm2_path,
        data,
        sample_packing=True,
        pad_to_sequence_len=True,
        sequence_len=sequence_len,
        micro_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        save_steps=steps,
    )
    run = axolotl("train", config, tmp_path)

    conversations = logged(tmp_path / "out", CONVERSATIONS, steps)
    assert conversations == [per_step] * steps
    assert f"genprm: {per_step} conversations in the first optimizer step (sample packing: " in (
        run.stdout + run.stderr
    )
    assert all(math.isfinite(loss) for loss in logged(tmp_path / "out", "loss", steps))
    history, _ = read_wandb_run(wandb_run(tmp_path))
    assert history[f"train/{CONVERSATIONS}"] == conversations
