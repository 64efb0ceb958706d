"""What goes wrong around a synthesis run and must not lose or mix data: a full disk, deleted or
hand-edited stage files, missing, empty and badly encoded inputs, an output that is its own
input, two writers on one output, big inputs, and a resumed run's summary."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_synthesis import convert_labelled
from data_synthesis.cli import main
from data_synthesis.rollout import RolloutSettings, RolloutStage
from data_synthesis.runner import StageFailed, run_stage
from data_synthesis.stage import Stage, StageResult
from data_synthesis.store import StageOutput, companion
from genprm.backends import EngineError
from genprm.paths import output_lock
from genprm.runs import ResumeError
from genprm.sandbox import Sandbox
from genprm.testing import ScriptedEngine
from tests.support.paths import REPO


def rollout_record(index: int, pad: int = 0) -> dict:
    """A rollout-stage record as ``label`` reads it."""
    return {
        "id": f"r{index}",
        "problem": "What is 2 + 3?" + " " * pad,
        "steps": ["Step 1: 2 + 3 = 5.", "Step 2: The answer is 5."],
        "mc": [0.5, 1.0],
        "mc_initial": 0.5,
        "rollouts": [8, 0],
    }


def write_lines(path: Path, lines: list) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def rollout_input(path: Path, count: int, pad: int = 0) -> Path:
    return write_lines(path, [json.dumps(rollout_record(i, pad)) for i in range(count)])


def whole_lines(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def label(source: Path, output: Path, *extra: str) -> int:
    return main(["label", "--input", str(source), "--output", str(output), "--no-progress", *extra])


class Copy(Stage):
    name = "copy"

    def settings(self):
        return {}

    async def process(self, record):
        dropped = [dict(record, drop_reason="odd")] if record["n"] % 2 else []
        kept = [] if dropped else [record]
        return StageResult(kept, {"kept": len(kept), "dropped": len(dropped)}, dropped)


def numbered(count: int) -> list[dict]:
    return [{"id": f"n{i}", "n": i} for i in range(count)]


# ------------------------------------------------------------------------------ full disk


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 64 KiB tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_names_the_file_and_the_ledger_only_names_whole_records(
    tmp_path, small_disk, capsys
):
    source = rollout_input(tmp_path / "rollout.jsonl", 2000, pad=200)
    output = small_disk / "label.jsonl"
    assert label(source, output) == 1
    err = capsys.readouterr().err
    assert str(small_disk) in err and "No space left" in err and "rerun" in err
    written = {record["id"] for record in whole_lines(output)}
    named = {i for entry in whole_lines(companion(output, "done.jsonl")) for i in entry["outputs"]}
    assert named and named <= written
    remount = ["mount", "-o", "remount,size=16m", str(small_disk)]
    subprocess.run(remount, check=True)
    assert label(source, output) == 0
    assert "2000/2000" in capsys.readouterr().out
    ids = [record["id"] for record in whole_lines(output)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(2000))


# --------------------------------------------------------------- ledger and output disagree


def test_a_deleted_output_whose_ledger_stays_is_redone(tmp_path, caplog):
    output = tmp_path / "copy.jsonl"
    run_stage(Copy(), numbered(4), output, progress=False)
    dropped = companion(output, "dropped.jsonl")
    before = (output.read_bytes(), dropped.read_bytes())
    output.unlink()
    summary = run_stage(Copy(), numbered(4), output, progress=False)
    assert f"{companion(output, 'done.jsonl')} names records of 2 inputs" in caplog.text
    assert str(output) in caplog.text
    assert (output.read_bytes(), dropped.read_bytes()) == before
    assert summary.totals == {"kept": 2, "dropped": 2} and summary.finished == 4
    lines = dropped.read_bytes().splitlines(keepends=True)
    dropped.write_bytes(lines[1])  # n1's dropped record is gone
    run_stage(Copy(), numbered(4), output, progress=False)
    assert sorted(r["id"] for r in whole_lines(dropped)) == ["n1", "n3"]
    assert len(whole_lines(companion(output, "done.jsonl"))) == 4


def test_a_deleted_output_is_redone_by_the_cli(tmp_path, caplog):
    source = rollout_input(tmp_path / "rollout.jsonl", 2)
    output = tmp_path / "label.jsonl"
    assert label(source, output) == 0
    before = output.read_bytes()
    output.unlink()
    assert label(source, output) == 0
    assert f"{output}.done.jsonl names records of 2 inputs" in caplog.text
    assert output.read_bytes() == before


def test_a_deleted_ledger_with_its_output_is_refused(tmp_path):
    output = tmp_path / "copy.jsonl"
    run_stage(Copy(), numbered(4), output, progress=False)
    before = output.read_bytes()
    companion(output, "done.jsonl").unlink()
    with pytest.raises(ResumeError) as refused:
        run_stage(Copy(), numbered(4), output, progress=False)
    assert str(companion(output, "done.jsonl")) in str(refused.value)
    assert output.read_bytes() == before


def test_a_corrupt_middle_line_or_ledger_line_names_file_and_line(tmp_path):
    output = tmp_path / "copy.jsonl"
    run_stage(Copy(), numbered(6), output, progress=False)
    lines = output.read_bytes().splitlines(keepends=True)
    output.write_bytes(lines[0] + b"{oops\n" + b"".join(lines[2:]))
    with pytest.raises(ResumeError, match=rf"^{output}:2: .*not JSON"):
        StageOutput(output, {})
    output.write_bytes(b"".join(lines))
    ledger = companion(output, "done.jsonl")
    ledger.write_bytes(b"not json\n" + ledger.read_bytes())
    with pytest.raises(ResumeError, match=rf"^{ledger}:1: .*not JSON"):
        StageOutput(output, {})


# ---------------------------------------------------------------- missing and empty inputs


ENGINE = ["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1"]


@pytest.mark.parametrize("command", ["solve", "rollout", "label", "rationale", "filter"])
@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_missing_input_is_named_before_anything_starts(tmp_path, capsys, command, kind):
    source = tmp_path / "typo.jsonl"
    if kind == "folder":
        source.mkdir()
    out = tmp_path / "out"
    engine = ENGINE if command in ("solve", "rollout", "rationale") else []
    argv = [command, "--input", str(source), "--output", str(out / "x.jsonl"), *engine]
    assert main([*argv, "--no-progress"]) == 2
    assert str(source) in capsys.readouterr().err
    assert not out.exists()


def test_export_from_a_missing_input_keeps_the_existing_export(tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "conversations.jsonl").write_text('{"id": "kept"}\n')
    assert main(["export", "--input", str(tmp_path / "typo.jsonl"), "--out", str(export)]) == 2
    assert "typo.jsonl" in capsys.readouterr().err
    assert (export / "conversations.jsonl").read_text() == '{"id": "kept"}\n'


def test_an_empty_input_says_so(tmp_path, capsys):
    source = write_lines(tmp_path / "rollout.jsonl", ["", "  "])
    assert label(source, tmp_path / "label.jsonl") == 0
    assert f"{source} has no records" in capsys.readouterr().out
    empty = write_lines(tmp_path / "filter.jsonl", [])
    assert main(["export", "--input", str(empty), "--out", str(tmp_path / "export")]) == 0
    assert f"{empty} has no records" in capsys.readouterr().out


# ----------------------------------------------------------------- outputs that replace files


GOOD = {"id": "g", "problem": "p", "steps": ["a", "b"], "label": 1}


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_convert_refuses_to_write_over_its_input(tmp_path, capsys, how):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(GOOD)])
    target = tmp_path / "out.jsonl"
    if how == "same":
        target = source
    elif how == "symlink":
        target.symlink_to(source)
    else:
        os.link(source, target)
    before = source.read_bytes()
    assert convert_labelled.main([str(source), str(target)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_convert_and_export_say_when_they_replace_an_output(tmp_path, capsys):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(GOOD)])
    target = tmp_path / "out.jsonl"
    assert convert_labelled.main([str(source), str(target)]) == 0
    assert "replac" not in capsys.readouterr().out
    assert convert_labelled.main([str(source), str(target)]) == 0
    assert f"replaced the previous {target}" in capsys.readouterr().out
    empty = write_lines(tmp_path / "filter.jsonl", [])
    export = tmp_path / "export"
    assert main(["export", "--input", str(empty), "--out", str(export)]) == 0
    assert "replac" not in capsys.readouterr().out
    assert main(["export", "--input", str(empty), "--out", str(export)]) == 0
    assert f"replaced the previous export in {export}" in capsys.readouterr().out


# -------------------------------------------------------------------------------- encoding


BAD_UTF8 = b'{"id": "r1", "problem": "caf\xe9"}'
SURROGATE = json.dumps({**rollout_record(1), "problem": "\ud800"})


@pytest.mark.parametrize(("bad", "reason"), [(BAD_UTF8, "not UTF-8"), (SURROGATE, "surrogate")])
def test_badly_encoded_lines_name_file_and_line_or_are_skipped(tmp_path, capsys, bad, reason):
    source = write_lines(tmp_path / "rollout.jsonl", [json.dumps(rollout_record(0)), bad])
    output = tmp_path / "label.jsonl"
    assert label(source, output) == 2
    assert f"{source}:2: " in capsys.readouterr().err
    assert label(source, output, "--skip-invalid") == 0
    printed = capsys.readouterr().out
    assert f"{source}:2: " in printed and reason in printed
    assert [record["id"] for record in whole_lines(output)] == ["r0"]
    write_lines(source, [json.dumps(rollout_record(0)), json.dumps(rollout_record(2)), bad])
    before = output.read_bytes()
    assert label(source, output) == 2
    assert output.read_bytes() == before


@pytest.mark.parametrize(
    "bad", [b'{"problem": "caf\xe9", "steps": ["a", "b"], "label": 1}',
            json.dumps({**GOOD, "problem": "\udc80"})],
)  # fmt: skip
def test_convert_names_a_badly_encoded_line(tmp_path, capsys, bad):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(GOOD), bad])
    assert convert_labelled.main([str(source), str(tmp_path / "out.jsonl")]) == 2
    assert f"{source}:2: " in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_solve_names_a_badly_encoded_problem_line(tmp_path, capsys):
    good = json.dumps({"question": "What is 2 + 3?", "answer": "#### 5"})
    bad = json.dumps({"question": "\ud800", "answer": "#### 5"})
    source = write_lines(tmp_path / "problems.jsonl", [good, bad])
    argv = ["solve", "--input", str(source), "--output", str(tmp_path / "s.jsonl"), *ENGINE]
    assert main([*argv, "--no-progress"]) == 2
    assert f"{source}:2: " in capsys.readouterr().err


# --------------------------------------------------------------------------------- scale


def test_label_takes_time_linear_in_the_records(tmp_path):
    """30,000 records: a per-record cost that grows with the output would take many minutes."""
    source = rollout_input(tmp_path / "rollout.jsonl", 30_000)
    output = tmp_path / "label.jsonl"
    command = [sys.executable, "-m", "data_synthesis.cli", "label", "--input", str(source),
               "--output", str(output), "--no-progress"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "30000/30000" in done.stdout


# -------------------------------------------------------------------------- one writer


def test_a_second_writer_of_one_output_is_refused_naming_the_first(tmp_path):
    source = rollout_input(tmp_path / "rollout.jsonl", 60_000)
    output = tmp_path / "label.jsonl"
    command = [sys.executable, "-m", "data_synthesis.cli", "label", "--input", str(source),
               "--output", str(output), "--no-progress"]  # fmt: skip
    lock = Path(f"{output}.lock")
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and f"pid {first.pid} " in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=300) == 0
    ids = [record["id"] for record in whole_lines(output)]
    assert len(ids) == len(set(ids)) == 60_000


def test_run_refuses_an_out_folder_another_run_holds(tmp_path, capsys):
    problem = json.dumps({"question": "q", "answer": "1"})
    source = write_lines(tmp_path / "problems.jsonl", [problem])
    out = tmp_path / "run"
    with output_lock(out / "run"):
        argv = ["run", str(REPO / "configs" / "cpu-default.yml"), "--input", str(source)]
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (out / "solve.jsonl").exists()


# ------------------------------------------------------------------- a resumed run's totals


RIGHT = "so \\boxed{10}"
STEPS = ["Step 1: a", "Step 2: b", "Step 3: c"]


def solution(problem_id: str, k: int) -> dict:
    return {"id": f"{problem_id}-{k}", "problem_id": problem_id, "problem": f"Add {problem_id}.",
            "answer": "10", "steps": STEPS, "final_answer": "10", "correct": True}  # fmt: skip


def rollouts(fail_on: str | None = None) -> ScriptedEngine:
    """Every rollout right; a request whose prompt ends with ``fail_on`` fails (a server gone)."""

    def answer(prompt: str, index: int) -> str:
        if fail_on is not None and prompt.endswith(fail_on):
            raise EngineError("server gone")
        return RIGHT

    return ScriptedEngine(answer)


def rollout_run(engine, output: Path, sandbox, inputs) -> dict:
    settings = RolloutSettings(initial_k=4, k_hard=2, k_medium=2, k_easy=2)
    cache = output.with_name(f"{output.name}.initial.jsonl")
    stage = RolloutStage(engine, sandbox, settings, cache_path=cache)
    return run_stage(stage, inputs, output, concurrency=1, progress=False)


def test_a_resumed_run_counts_what_a_clean_run_counts(tmp_path):
    inputs = [solution("p", 0), solution("p", 1), solution("q", 0)]
    with Sandbox(workers=1) as sandbox:
        clean = rollout_run(rollouts(), tmp_path / "clean.jsonl", sandbox, inputs)
        output = tmp_path / "resumed.jsonl"
        # p-0 computes MC(s_0) of p (and caches it), then fails on its second step
        with pytest.raises(StageFailed):
            rollout_run(rollouts(fail_on="Step 2: b\n\nStep 3: "), output, sandbox, inputs)
        assert not whole_lines(output)
        resumed = rollout_run(rollouts(), output, sandbox, inputs)
    assert resumed.totals == clean.totals
    assert whole_lines(output) == whole_lines(tmp_path / "clean.jsonl")


def test_totals_come_from_every_finished_input(tmp_path):
    output = tmp_path / "copy.jsonl"
    run_stage(Copy(), numbered(3), output, progress=False)
    summary = run_stage(Copy(), numbered(5), output, progress=False)
    assert summary.totals == {"kept": 3, "dropped": 2}
    with StageOutput(output, {}) as out:
        assert out.totals() == {"kept": 3, "dropped": 2}
