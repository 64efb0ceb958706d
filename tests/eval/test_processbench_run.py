"""``genprm-eval processbench``: a run with a scripted engine (exact predictions and metrics),
resuming (a run stored with the old ``shared`` history default too), adaptive mode's levels,
scoring an existing predictions file, W&B offline, and the real command against a vLLM server
on 127.0.0.1 with the embedded model, killed with SIGKILL and resumed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.cli import main
from eval.processbench import runner
from eval.processbench.data import DEFAULT_DATA_DIR, load_splits
from eval.processbench.metrics import score
from genprm import runs
from genprm.format import ANALYZE_END, ANALYZE_PREFIX, OUTPUT_PREFIX
from genprm.runs import ResumeError, appender
from genprm.sandbox import Sandbox
from genprm.testing import ScriptedEngine
from genprm.testing.local_server import free_port
from genprm.verifier import GenPRMVerifier
from tests.support.judgements import judgement
from tests.support.paths import REPO

SETTINGS = {"verifier": "genprm", "model": "scripted", "maj": 1}


def judging(p_by_paragraph: dict[int, float]):
    """A cot-mode script: every analysis is short; paragraph t is judged with p(Yes) from
    ``p_by_paragraph`` (0.9 when absent)."""

    def script(prompt: str, index: int):
        t = int(re.findall(r"Let's analyze the Paragraph (\d+)", prompt)[-1])
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Checked.\n" + ANALYZE_END
        return judgement(p_by_paragraph.get(t, 0.9))

    return script


@pytest.fixture(scope="module")
def rows():
    return load_splits(DEFAULT_DATA_DIR, ["gsm8k", "math"], limit=3)


def run_scripted(rows, out: Path, p_by_paragraph) -> None:
    verifier = GenPRMVerifier(ScriptedEngine(judging(p_by_paragraph)), mode="cot")
    done = runner.start(out, SETTINGS)
    pending = [row for split in rows.values() for row in split if row.id not in done]
    write = appender(out / runner.PREDICTIONS)
    asyncio.run(runner.run_genprm(verifier, pending, write, lambda steps: None))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_scripted_run_writes_every_solution_and_exact_metrics(rows, tmp_path):
    run_scripted(rows, tmp_path, {2: 0.2})  # paragraph 2 is always judged wrong
    lines = read_lines(tmp_path / runner.PREDICTIONS)
    everything = [row for split in rows.values() for row in split]
    assert sorted(line["id"] for line in lines) == sorted(row.id for row in everything)
    by_id = {row.id: row for row in everything}
    for line in lines:
        row = by_id[line["id"]]
        assert (line["split"], line["label"]) == (row.split, row.label)
        expected = 1 if len(row.steps) > 1 else -1
        assert line["prediction"] == expected
        assert line["step_rewards"] == pytest.approx([0.9, 0.2][: expected + 1 or 1])
        assert len(line["turns"]) == len(line["step_rewards"])
    metrics = runner.finish(tmp_path, rows, SETTINGS, "scripted")
    predictions = {line["id"]: line["prediction"] for line in lines}
    assert metrics == score(rows, predictions)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "report.md").exists() and (tmp_path / "f1_per_split.png").exists()


def test_a_rerun_keeps_finished_lines_and_cuts_a_torn_one(rows, tmp_path):
    run_scripted(rows, tmp_path, {})
    lines = (tmp_path / runner.PREDICTIONS).read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:2])
    (tmp_path / runner.PREDICTIONS).write_bytes(kept + lines[2][:15])  # killed mid-write
    run_scripted(rows, tmp_path, {})
    after = (tmp_path / runner.PREDICTIONS).read_bytes()
    assert after.startswith(kept)
    ids = [line["id"] for line in read_lines(tmp_path / runner.PREDICTIONS)]
    assert sorted(ids) == sorted(row.id for split in rows.values() for row in split)


def test_a_rerun_with_other_settings_is_refused(rows, tmp_path):
    run_scripted(rows, tmp_path, {})
    with pytest.raises(ResumeError, match=r"maj 1 -> 8"):
        runner.start(tmp_path, {**SETTINGS, "maj": 8})


def test_adaptive_lines_name_the_level_that_decided_each_step(rows, tmp_path):
    def script(prompt: str, index: int):
        t = prompt.count("<|im_start|>user")
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Checked.\n" + ANALYZE_END
        if t != 2:
            p = 0.95
        elif prompt.endswith(ANALYZE_END + OUTPUT_PREFIX):
            p = 0.02  # paragraph 2 with analysis: wrong
        else:
            p = 0.5  # paragraph 2 judged directly: ambiguous
        return judgement(p)

    pending = [row for split in rows.values() for row in split]
    with Sandbox(workers=1) as sandbox:
        verifier = GenPRMVerifier(ScriptedEngine(script), sandbox, mode="adaptive")
        write = appender(tmp_path / runner.PREDICTIONS)
        asyncio.run(runner.run_genprm(verifier, pending, write, lambda steps: None))
    lines = read_lines(tmp_path / runner.PREDICTIONS)
    assert len(lines) == len(pending)
    for line in lines:
        assert line["levels"] == ["direct", "cot"][: len(line["step_rewards"])]
        assert line["step_rewards"] == pytest.approx([0.95, 0.02][: len(line["levels"])])
    run_scripted(rows, tmp_path / "cot", {})
    assert not any("levels" in line for line in read_lines(tmp_path / "cot" / runner.PREDICTIONS))


def test_a_run_stored_with_shared_history_resumes_as_it_was(tmp_path, capsys):
    """Runs started while ``shared`` was the default: the same command line (no --history)
    resumes them as they were, another --history is refused, and a new run is independent."""
    server = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: no engine ever starts
    command = ["processbench", "--engine", "openai", "--base-url", server, "--retries", "0",
               "--splits", "gsm8k", "--limit", "2", "--maj", "4", "--mode", "cot"]  # fmt: skip
    old = tmp_path / "old"
    assert main([*command, "--history", "shared", "--out", str(old)]) == 1  # settings stored
    rows = load_splits(DEFAULT_DATA_DIR, ["gsm8k"], 2)["gsm8k"]
    (old / runner.PREDICTIONS).write_bytes(b"".join(runner.prediction_line(r, -1) for r in rows))
    assert main([*command, "--out", str(old)]) == 0  # every row done: resumed, reported
    assert json.loads((old / runs.SETTINGS).read_text())["history"] == "shared"
    capsys.readouterr()
    assert main([*command, "--history", "independent", "--out", str(old)]) == 2
    assert "history 'shared' -> 'independent'" in capsys.readouterr().err
    new = tmp_path / "new"
    assert main([*command, "--out", str(new)]) == 1
    assert json.loads((new / runs.SETTINGS).read_text())["history"] == "independent"


@pytest.mark.parametrize("command", ["bon", "refine", "search"])
def test_every_scoring_command_keeps_a_stored_history(command, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / runs.SETTINGS).write_text(json.dumps({"history": "shared"}))
    for out in (old, new):  # --limit 0: the settings are written, then there is nothing to do
        assert main([command, "--limit", "0", "--out", str(out)]) == 0
    assert json.loads((old / runs.SETTINGS).read_text())["history"] == "shared"
    assert json.loads((new / runs.SETTINGS).read_text())["history"] == "independent"


def predictions_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "elsewhere.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_scoring_a_predictions_file_reports_missing_and_unknown_ids(tmp_path, capsys):
    data = [json.loads(line) for line in (DEFAULT_DATA_DIR / "gsm8k.jsonl").open()][:4]
    lines = [json.dumps({"id": row["id"], "prediction": row["label"]}) for row in data[:3]]
    lines.append(json.dumps({"id": "gsm8k-unknown-7", "prediction": -1}))
    path = predictions_file(tmp_path, lines)
    out = tmp_path / "scored"
    assert main(["processbench", "--predictions", str(path), "--splits", "gsm8k", "--limit",
                 "4", "--out", str(out), "--wandb-project", "genprm-tests"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "1 ids have no prediction" in captured.err
    assert "gsm8k-unknown-7" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    expected = sum(row["label"] >= 0 for row in data[:3]) / sum(row["label"] >= 0 for row in data)
    assert metrics["splits"]["gsm8k"]["acc_err"] == pytest.approx(100 * expected)
    assert "gsm8k-unknown-7" in (out / "report.md").read_text()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run"


def test_a_malformed_predictions_line_names_file_and_line(tmp_path, capsys):
    path = predictions_file(tmp_path, ['{"id": "gsm8k-0", "prediction": 1}', '{"id": 3}'])
    code = main(["processbench", "--predictions", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"{path}:2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real engine


def eval_command(server, out: Path, limit: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "eval.cli", "processbench", "--engine", "openai",
        "--base-url", server.base_url, "--limit", str(limit), "--budget", "24",
        "--sandbox-workers", "1", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.vllm_server
def test_the_command_on_a_vllm_server_writes_a_complete_consistent_run(
    vllm_servers, vllm_api_key, tmp_path
):
    done = subprocess.run(
        eval_command(vllm_servers[0], tmp_path, 1), cwd=REPO, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    lines = read_lines(tmp_path / runner.PREDICTIONS)
    assert sorted(line["split"] for line in lines) == sorted(
        ["gsm8k", "math", "olympiadbench", "omnimath"]
    )
    for line in lines:
        rewards = line["step_rewards"]
        assert rewards and all(0.0 <= r <= 1.0 for r in rewards)
        first = next((i for i, r in enumerate(rewards) if r < 0.5), -1)
        assert line["prediction"] == first
        assert first in (-1, len(rewards) - 1)  # scoring stops at the first wrong step
        assert len(line["turns"]) == len(rewards)
        assert all(
            turn.startswith("<analyze>\nLet's analyze the Paragraph") for turn in line["turns"]
        )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"splits", "average_f1"}
    assert all(set(m) == {"n", "acc_err", "acc_corr", "f1"} for m in metrics["splits"].values())
    assert "average F1" in done.stdout and (tmp_path / "f1_per_split.png").exists()


@pytest.mark.vllm_server
def test_the_command_resumes_after_kill_9(vllm_servers, vllm_api_key, tmp_path):
    # Direct mode (one short request per step), one solution at a time: quick, and killable
    # between two solutions.
    command = eval_command(vllm_servers[0], tmp_path, 2, "--concurrency", "1", "--mode", "direct")
    first = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    predictions = tmp_path / runner.PREDICTIONS
    try:
        deadline = time.monotonic() + 600
        while not (predictions.exists() and predictions.read_bytes().count(b"\n") >= 1):
            assert first.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = predictions.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]
    assert kept.count(b"\n") < 8, "nothing was left to resume"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "already in" in done.stderr
    after = predictions.read_bytes()
    assert after.startswith(kept)
    ids = [line["id"] for line in read_lines(predictions)]
    assert len(ids) == len(set(ids)) == 8


@pytest.mark.vllm_server
def test_the_critic_baseline_on_a_vllm_server(vllm_servers, vllm_api_key, tmp_path):
    command = eval_command(
        vllm_servers[0], tmp_path, 1, "--verifier", "critic", "--max-tokens", "48"
    )
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    lines = read_lines(tmp_path / runner.PREDICTIONS)
    assert len(lines) == 4
    for line in lines:
        assert len(line["critiques"]) == 1  # greedy
        assert line["prediction"] is None or -1 <= line["prediction"]
    assert json.loads((tmp_path / "settings.json").read_text())["verifier"] == "critic"


def test_an_evenly_spaced_sample_holds_both_halves_of_a_split(tmp_path):
    path = predictions_file(tmp_path, ['{"id": "math-0", "prediction": -1}'])
    out = tmp_path / "sampled"
    assert main(["processbench", "--predictions", str(path), "--splits", "math", "--sample",
                 "10", "--out", str(out)]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["splits"]["math"]["n"] == 10
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sample"] == 10
    rows = load_splits(DEFAULT_DATA_DIR, ["math"])["math"]
    picked = [rows[i * len(rows) // 10] for i in range(10)]
    assert {row.label == -1 for row in picked} == {True, False}
