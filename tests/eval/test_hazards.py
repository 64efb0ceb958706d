"""``genprm-eval``'s bad inputs and outputs: every command checks its --out folder (a folder it
can write) and takes it for itself (one writer per folder) before any engine starts, says so
when its selection is empty, and scoring a predictions file refuses another run's folder and
predictions that are no step of their row. One clear line on stderr each, no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eval.cli import main
from eval.processbench import runner
from eval.processbench.data import DEFAULT_DATA_DIR, load_splits
from genprm.paths import output_lock
from genprm.runs import appender
from tests.support.paths import REPO

# Each command on a one-problem selection: without the output checks it would go on to start
# an engine.
COMMANDS = {
    "processbench": ["processbench", "--splits", "gsm8k", "--limit", "1", "--mode", "direct"],
    "bon": ["bon", "--limit", "1", "--n", "1"],
    "refine": ["refine", "--limit", "1"],
    "search": ["search", "--limit", "1", "--n", "2", "--beam-width", "2"],
}


@pytest.fixture(autouse=True)
def no_engines(monkeypatch):
    """Fail the test loudly where a command starts an engine."""

    def refuse(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr("genprm.backends.make_engine", refuse)
    monkeypatch.setattr("genprm.cli.make_engine", refuse)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(options)``: a fresh tmpfs mounted with ``options``, unmounted afterwards (as
    root, a read-only bind or chmod would not stop writes)."""
    mounted = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as handle:
        with pytest.raises(OSError, match="No space left"):
            while True:
                handle.write(b"\0" * 4096)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [
        line
        for line in err.splitlines()
        if line.startswith("genprm-eval:") and "the embedded model's preset" not in line
    ]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- --out checks


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_is_a_file_is_refused_before_any_engine(command, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("someone's file\n")
    assert main([*COMMANDS[command], "--out", str(out)]) == 2
    assert f"{out} is not a folder" in one_line_error(capsys)
    assert out.read_text() == "someone's file\n"


@pytest.mark.root
@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_on_a_read_only_file_system_is_refused_before_any_engine(command, tmpfs, capsys):
    out = tmpfs("size=64k,ro")
    assert main([*COMMANDS[command], "--out", str(out)]) == 2
    assert f"cannot write to {out}: Read-only file system" in one_line_error(capsys)
    assert main([*COMMANDS[command], "--out", str(out / "run")]) == 2
    assert f"cannot make the output folder {out / 'run'}" in one_line_error(capsys)


@pytest.mark.root
def test_an_out_on_a_full_file_system_is_refused_before_any_engine(tmpfs, capsys):
    out = tmpfs("size=16k")
    fill(out)
    assert main([*COMMANDS["bon"], "--out", str(out)]) == 2
    assert f"cannot write to {out}: No space left on device" in one_line_error(capsys)


# ----------------------------------------------------------------------------- one writer


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_writer_of_an_out_folder_is_refused(command, tmp_path, capsys):
    out = tmp_path / "run"
    with output_lock(out.resolve()):  # another run holds it (an open of its own: flock)
        assert main([*COMMANDS[command], "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert f"{out} is being written by pid {os.getpid()}" in line
    assert not (out / "settings.json").exists()


HELD_RUN = """
import sys
import eval.cli

real = eval.cli.score_predictions


def held(*args):
    print("scoring", flush=True)
    sys.stdin.readline()
    return real(*args)


eval.cli.score_predictions = held
sys.exit(eval.cli.main(sys.argv[1:]))
"""


def scoring(predictions: Path, out: Path) -> list[str]:
    return ["processbench", "--predictions", str(predictions), "--splits", "gsm8k",
            "--limit", "2", "--out", str(out)]  # fmt: skip


def held_run(argv: list[str]) -> subprocess.Popen:
    """``genprm-eval ARGV`` in a process of its own that stops, holding its output, until a
    line comes on its stdin."""
    run = subprocess.Popen(
        [sys.executable, "-c", HELD_RUN, *argv], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert run.stdout.readline() == "scoring\n", run.communicate()[1][-3000:]
    return run


def genprm_eval(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eval.cli", *argv], cwd=REPO, text=True,
                          capture_output=True, timeout=300)  # fmt: skip


def test_two_processes_on_one_out_folder_the_second_is_refused_until_the_first_ends(tmp_path):
    predictions = tmp_path / "theirs.jsonl"
    predictions.write_text('{"id": "gsm8k-0", "prediction": 1}\n')
    out = tmp_path / "scored"
    first = held_run(scoring(predictions, out))
    try:
        second = genprm_eval(scoring(predictions, out))
        assert second.returncode == 2, second.stderr
        assert f"is being written by pid {first.pid} " in second.stderr
        assert "Traceback" not in second.stderr
        first.stdin.write("\n")
        first.stdin.close()
        assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    finally:
        first.kill()
        first.wait()
    assert genprm_eval(scoring(predictions, out)).returncode == 0


def test_a_killed_writer_leaves_no_claim_behind(tmp_path):
    predictions = tmp_path / "theirs.jsonl"
    predictions.write_text('{"id": "gsm8k-0", "prediction": 1}\n')
    out = tmp_path / "scored"
    first = held_run(scoring(predictions, out))
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    again = genprm_eval(scoring(predictions, out))
    assert again.returncode == 0, again.stderr[-3000:]


# ----------------------------------------------------------------------------- empty selections


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_selection_says_so(command, tmp_path, capsys):
    argv = [*strip_limit(COMMANDS[command]), "--limit", "0"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "nothing selected" in one_line_error(capsys)
    assert not (tmp_path / "run" / "metrics.json").exists()


def strip_limit(flags: list[str]) -> list[str]:
    index = flags.index("--limit")
    return flags[:index] + flags[index + 2 :]


def test_an_empty_predictions_selection_says_so(tmp_path, capsys):
    predictions = tmp_path / "theirs.jsonl"
    predictions.write_text('{"id": "gsm8k-0", "prediction": 1}\n')
    out = tmp_path / "scored"
    argv = ["processbench", "--predictions", str(predictions), "--splits", "gsm8k"]
    assert main([*argv, "--limit", "0", "--out", str(out)]) == 0
    assert "nothing selected" in one_line_error(capsys)


def test_an_empty_samples_file_says_so(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    assert main(["refine", "--samples", str(samples), "--out", str(tmp_path / "run")]) == 0
    assert f"nothing selected from {samples}" in one_line_error(capsys)
    assert main(["bon", "--samples", str(samples), "--out", str(tmp_path / "bon")]) == 2
    assert one_line_error(capsys) == f"genprm-eval: {samples}: no samples"


# ----------------------------------------------------------------------------- predictions


@pytest.fixture(scope="module")
def gsm8k():
    return load_splits(DEFAULT_DATA_DIR, ["gsm8k"], limit=2)["gsm8k"]


def predictions_file(tmp_path: Path, predictions: dict) -> Path:
    path = tmp_path / "theirs.jsonl"
    path.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n"
                            for k, v in predictions.items()))  # fmt: skip
    return path


def score(path: Path, out: Path) -> int:
    return main(["processbench", "--predictions", str(path), "--splits", "gsm8k", "--limit",
                 "2", "--out", str(out)])  # fmt: skip


def test_scoring_predictions_refuses_the_folder_of_a_model_run(gsm8k, tmp_path, capsys):
    out = tmp_path / "model-run"
    settings = {"verifier": "genprm", "model": "scripted", "maj": 1}
    runner.start(out, settings)
    write = appender(out / runner.PREDICTIONS)
    for row in gsm8k:
        write(runner.prediction_line(row, -1, step_rewards=[0.9], turns=["ok"]))
    runner.finish(out, {"gsm8k": gsm8k}, settings, "scripted")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    path = predictions_file(tmp_path, {row.id: -1 for row in gsm8k})
    assert score(path, out) == 2
    assert f"refusing to resume {out}" in one_line_error(capsys)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert runner.start(out, settings) == {row.id for row in gsm8k}  # the run still resumes


def test_scoring_the_same_predictions_again_rewrites_the_report(gsm8k, tmp_path, capsys):
    path = predictions_file(tmp_path, {row.id: -1 for row in gsm8k})
    assert score(path, tmp_path / "scored") == 0
    assert score(path, tmp_path / "scored") == 0
    assert score(path, tmp_path / "scored") == 0
    capsys.readouterr()
    assert main(["processbench", "--predictions", str(path), "--splits", "gsm8k", "--limit",
                 "1", "--out", str(tmp_path / "scored")]) == 2  # fmt: skip
    assert "limit 2 -> 1" in one_line_error(capsys)


@pytest.mark.parametrize("prediction", [-7, -2, 99, "steps"])
def test_a_prediction_that_is_no_step_of_its_row_names_file_line_and_id(
    prediction, gsm8k, tmp_path, capsys
):
    row = gsm8k[1]
    value = len(row.steps) if prediction == "steps" else prediction
    path = predictions_file(tmp_path, {gsm8k[0].id: -1, row.id: value})
    assert score(path, tmp_path / "scored") == 2
    line = one_line_error(capsys)
    assert f"{path}:2" in line and repr(row.id) in line
    assert f"-1 or a step index 0..{len(row.steps) - 1}" in line


def test_a_predictions_path_that_is_a_folder_or_missing_is_named(tmp_path, capsys):
    assert score(tmp_path, tmp_path / "scored") == 2
    assert one_line_error(capsys) == f"genprm-eval: {tmp_path} is a folder, not a predictions file"
    assert score(tmp_path / "none.jsonl", tmp_path / "scored") == 2
    assert one_line_error(capsys) == f"genprm-eval: {tmp_path / 'none.jsonl'}: no such file"


def test_predictions_into_an_out_that_is_a_file_is_refused(gsm8k, tmp_path, capsys):
    path = predictions_file(tmp_path, {row.id: -1 for row in gsm8k})
    out = tmp_path / "report.md"
    out.write_text("mine\n")
    assert score(path, out) == 2
    assert f"{out} is not a folder" in one_line_error(capsys)


@pytest.mark.root
def test_predictions_into_a_read_only_or_full_file_system(gsm8k, tmpfs, tmp_path, capsys):
    path = predictions_file(tmp_path, {row.id: -1 for row in gsm8k})
    assert score(path, tmpfs("size=64k,ro")) == 2
    assert "Read-only file system" in one_line_error(capsys)
    full = tmpfs("size=16k")
    fill(full)
    assert score(path, full) == 2
    assert "No space left on device" in one_line_error(capsys)
    # room for the check, not for the report (its plot alone takes more than 16 KiB)
    assert score(path, tmpfs("size=16k")) == 1
    assert "No space left on device" in one_line_error(capsys)
