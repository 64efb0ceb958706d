"""``genprm-synth`` as users run it: every stage of the chain on real vLLM engines (in-process in
the generation environment, and served), resume after kill -9, a server that dies mid-run,
shards, bad input, W&B offline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_synthesis.cli import main
from data_synthesis.config import STAGES
from tests.support.paths import REPO, SHARED_DATA

GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
RECORD_STAGES = STAGES[:-1]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def served_config(tmp_path: Path, base_url: str, **engine) -> Path:
    """configs/cpu-default.yml with every role on one served engine."""
    config = yaml.safe_load((REPO / "configs" / "cpu-default.yml").read_text())
    options = {"engine": "openai", "base_urls": [base_url], **engine}
    config["engines"] = {role: options for role in ("policy", "rollout", "rationale")}
    config["sandbox"] = {"workers": 1}
    path = tmp_path / "served.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def synth(*args: str) -> list[str]:
    return [sys.executable, "-m", "data_synthesis.cli", *args]


def check_chain(out: Path, problems: int) -> None:
    """Every stage's file is complete and consistent with the one before it."""
    solve = read(out / "solve.jsonl")
    assert solve, "the policy wrote no valid solution"
    assert len({r["problem_id"] for r in solve}) <= problems
    for record in solve:
        assert record["id"].startswith(record["problem_id"] + "-")
        assert len(record["steps"]) >= 2
        assert all(step.startswith(f"Step {k}: ") for k, step in enumerate(record["steps"], 1))
        assert isinstance(record["correct"], bool)
    previous = solve
    for name in ("rollout", "label", "rationale"):
        records = read(out / f"{name}.jsonl")
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in previous)
        previous = records
    for record in read(out / "rollout.jsonl"):
        steps = len(record["steps"])
        assert len(record["mc"]) == len(record["rollouts"]) == steps
        assert all(0.0 <= mc <= 1.0 for mc in record["mc"]) and 0 <= record["mc_initial"] <= 1
        assert record["rollouts"][-1] == 0  # the last step is graded by its own answer
        zero = next((i for i, mc in enumerate(record["mc"][:-1]) if mc == 0), None)
        if zero is None:
            assert record["mc"][-1] == float(record["correct"])
        else:  # the early stop: every later step is 0, with nothing rolled out
            assert all(mc == 0 for mc in record["mc"][zero:])
            assert not any(record["rollouts"][zero + 1 :])
    for record in read(out / "label.jsonl"):
        assert set(record["labels"]) <= {0, 1} and len(record["labels"]) == len(record["steps"])
        assert record["first_error"] == next(
            (i for i, label in enumerate(record["labels"]) if label == 0), -1
        )
    for record in read(out / "rationale.jsonl"):
        assert len(record["rationales"]) == len(record["steps"])
        assert record["judge_first_error"] is None or -1 <= record["judge_first_error"] < len(
            record["steps"]
        )
    kept = read(out / "filter.jsonl")
    dropped_path = out / "filter.jsonl.dropped.jsonl"
    dropped = read(dropped_path) if dropped_path.exists() else []
    assert len(kept) + len(dropped) == len(read(out / "rationale.jsonl"))
    assert all(r["judge_first_error"] == r["first_error"] for r in kept)
    assert all(r["drop_reason"] for r in dropped)
    conversations = read(out / "export" / "conversations.jsonl")
    assert [row["id"] for row in conversations] == [r["id"] for r in kept]
    assert (out / "export" / "dataset" / "dataset_info.json").exists()
    assert (out / "export" / "README.md").exists()


@pytest.mark.vllm_server
def test_run_on_the_embedded_model_in_process(vllm_python, tmp_path):
    """The issue's command, as a user runs it in .venv-vllm: the in-process vLLM engine in
    every role."""
    done = subprocess.run(
        [vllm_python, "-m", "data_synthesis.cli", "run", "configs/cpu-default.yml",
         "--input", str(GSM8K), "--limit", "2", "--out", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    check_chain(tmp_path / "run", 2)
    for name in RECORD_STAGES:
        assert f"{name}: {tmp_path / 'run' / (name + '.jsonl')}" in done.stdout
    assert "export: " in done.stdout


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= count):
        assert process.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, f"{path} did not reach {count} lines"
        time.sleep(0.1)


def finished_lines(out: Path) -> dict[str, list[bytes]]:
    """Each stage's records that its ledger names (finished before a kill)."""
    finished = {}
    for name in RECORD_STAGES:
        ledger = out / f"{name}.jsonl.done.jsonl"
        if not ledger.exists():
            continue
        data = ledger.read_bytes()
        named = {
            output
            for line in data[: data.rfind(b"\n") + 1].splitlines()
            for output in json.loads(line)["outputs"]
        }
        records = (out / f"{name}.jsonl").read_bytes().splitlines(keepends=True)
        finished[name] = [line for line in records if json.loads(line)["id"] in named]
    return finished


@pytest.mark.vllm_server
def test_kill_9_mid_stage_then_the_same_command_completes(vllm_servers, vllm_api_key, tmp_path):
    config = served_config(tmp_path, vllm_servers[0].base_url)
    out = tmp_path / "run"
    command = synth("run", str(config), "--input", str(GSM8K), "--limit", "2", "--out", str(out))
    first = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_lines(out / "rollout.jsonl.done.jsonl", 1, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = finished_lines(out)
    assert before.get("rollout"), "nothing of the rollout stage was finished before the kill"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-5000:]
    check_chain(out, 2)
    for name, lines in before.items():
        after = (out / f"{name}.jsonl").read_bytes().splitlines(keepends=True)
        assert after[: len(lines)] == lines, f"{name}: a record finished before the kill changed"
        ids = [json.loads(line)["id"] for line in after]
        assert len(ids) == len(set(ids)), f"{name}: duplicated records"
        assert (out / f"{name}.jsonl").read_bytes().endswith(b"\n")


@pytest.mark.vllm_server
def test_a_server_dying_mid_run_fails_clearly_and_the_same_command_resumes(
    vllm_servers, vllm_api_key, tmp_path
):
    from tests.support.proxy import TCPProxy

    proxy = TCPProxy(vllm_servers[1].port).start()
    config = served_config(tmp_path, proxy.base_url, retries=1, backoff_s=0.2)
    output = tmp_path / "solve.jsonl"
    command = synth(
        "solve", "--input", str(GSM8K), "--limit", "4", "--output", str(output),
        "--config", str(config), "--config-engines", "--no-progress",
    )  # fmt: skip
    try:
        first = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for_lines(Path(f"{output}.done.jsonl"), 1, first)
        proxy.stop()
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 1
        assert "the engine failed" in stderr and "rerun the same command to resume" in stderr
        finished = read(Path(f"{output}.done.jsonl"))
        assert 1 <= len(finished) < 4
        proxy.start()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stderr[-5000:]
    ledger = read(Path(f"{output}.done.jsonl"))
    assert [entry["id"] for entry in ledger[: len(finished)]] == [e["id"] for e in finished]
    assert sorted(entry["id"] for entry in ledger) == [f"gsm8k-test-{i}" for i in range(4)]


@pytest.mark.vllm_server
def test_solve_shards_add_up_to_the_unsharded_run(vllm_servers, vllm_api_key, tmp_path):
    config = served_config(tmp_path, vllm_servers[0].base_url)

    def solve(output: Path, *extra: str) -> list[dict]:
        done = subprocess.run(
            synth("solve", "--input", str(GSM8K), "--limit", "2", "--output", str(output),
                  "--config", str(config), "--config-engines", "--no-progress", *extra),
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-5000:]
        return read(output)

    whole = solve(tmp_path / "whole.jsonl")
    shards = solve(tmp_path / "s0.jsonl", "--shard", "0/2") + solve(
        tmp_path / "s1.jsonl", "--shard", "1/2"
    )
    assert sorted(r["id"] for r in shards) == sorted(r["id"] for r in whole)
    by_id = {r["id"]: r for r in whole}
    assert all(r == by_id[r["id"]] for r in shards)  # seeded: the same samples either way


# --------------------------------------------------------------------- no engine


def rollout_records() -> list[dict]:
    return [
        {"id": "a", "problem": "p", "steps": ["Step 1: x", "Step 2: y"], "mc": [0.5, 0.0],
         "mc_initial": 0.5, "rollouts": [8, 0]},
        {"id": "b", "problem": "p", "steps": ["Step 1: x", "Step 2: y"], "mc": [0.36, 1.0],
         "mc_initial": 0.45, "rollouts": [100, 0]},
        {"id": "c", "problem": "p", "steps": ["Step 1: x", "Step 2: y"], "mc": [0.04, 0.0],
         "mc_initial": 0.05, "rollouts": [50, 0]},
    ]  # fmt: skip


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_label_cli_contract_and_methods(tmp_path, capsys):
    source = write_jsonl(tmp_path / "rollout.jsonl", rollout_records())
    assert main(["label", "--input", str(source), "--output", str(tmp_path / "rpe.jsonl")]) == 0
    rpe = read(tmp_path / "rpe.jsonl")
    # 0.36 / 0.45 is exactly 0.8 (but 0.7999999999999999 in floats); 0.04 / 0.05 too
    assert [(r["labels"], r["first_error"]) for r in rpe] == [
        ([1, 0], 1),
        ([1, 1], -1),
        ([1, 0], 1),
    ]
    args = ["--input", str(source), "--output", str(tmp_path / "hard.jsonl"), "--method", "hard"]
    assert main(["label", *args]) == 0
    assert [r["labels"] for r in read(tmp_path / "hard.jsonl")] == [[1, 0], [1, 1], [1, 0]]
    args = ["--input", str(source), "--output", str(tmp_path / "e.jsonl"), "--epsilon", "0.9"]
    assert main(["label", *args]) == 0
    assert [r["labels"] for r in read(tmp_path / "e.jsonl")] == [[1, 0], [0, 1], [0, 0]]
    table = capsys.readouterr().out
    assert "labels +" in table and str(tmp_path / "e.jsonl") in table


def test_label_shards_add_up_and_rerunning_changes_nothing(tmp_path):
    source = write_jsonl(tmp_path / "rollout.jsonl", rollout_records())
    whole = tmp_path / "whole.jsonl"
    assert main(["label", "--input", str(source), "--output", str(whole)]) == 0
    parts = []
    for index in range(2):
        part = tmp_path / f"part{index}.jsonl"
        assert (
            main(["label", "--input", str(source), "--output", str(part), "--shard", f"{index}/2"])
            == 0
        )
        parts += read(part)
    assert sorted(parts, key=lambda r: r["id"]) == read(whole)
    before = whole.read_bytes()
    assert main(["label", "--input", str(source), "--output", str(whole)]) == 0
    assert whole.read_bytes() == before
    assert main(["label", "--input", str(source), "--output", str(whole), "--method", "hard"]) == 2


def test_bad_input_names_file_and_line_or_is_skipped_and_counted(tmp_path, capsys):
    records = rollout_records()
    path = tmp_path / "rollout.jsonl"
    lines = [json.dumps(records[0]), "{not json", json.dumps({"id": "x"}), json.dumps(records[1])]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--input", str(path), "--output", str(out)]) == 2
    assert f"{path}:2: not JSON" in capsys.readouterr().err
    assert main(["label", "--input", str(path), "--output", str(out), "--skip-invalid"]) == 0
    printed = capsys.readouterr().out
    assert "2 invalid input records skipped" in printed and f"{path}:3: missing" in printed
    assert [r["id"] for r in read(out)] == ["a", "b"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**records[0], "mc": [0.5]}])
    assert main(["label", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "record id='a'" in capsys.readouterr().err


def test_wandb_offline_logs_stage_stats_and_histograms(tmp_path, read_wandb_run):
    source = write_jsonl(tmp_path / "rollout.jsonl", rollout_records())
    out = tmp_path / "labels.jsonl"
    argv = ["label", "--input", str(source), "--output", str(out), "--wandb-project", "synth-test"]
    assert main(argv) == 0
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    history, _ = read_wandb_run(run_dir)
    assert history["label/solutions"] == [3]
    assert history["label/labels_positive"] == [4] and history["label/labels_negative"] == [2]
    assert history["label/labels/_type"] == ["histogram"]
    assert sum(history["label/labels/values"][0]) == 6  # one count per step label
    assert history["label/samples/_type"] == ["table-file"]
