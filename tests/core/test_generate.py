"""genprm-generate: finished results survive a failed batch, a rerun completes the output (each
input once, in input order, as an uninterrupted run writes it), a changed input or changed
settings are refused, engine flags that do not fit the engine are usage errors, and an output
that cannot be written or that another run holds is refused before the engine starts.

The engine is the scripted one: a prompt missing from its script fails its request only.
"""

import json
import os
import subprocess

import pytest

from genprm import generate
from genprm.paths import output_lock
from genprm.testing import ScriptedEngine

ANSWERS = {f"q{i}": f"answer {i}" for i in range(7)}


def without(*prompts: str) -> ScriptedEngine:
    return ScriptedEngine({p: a for p, a in ANSWERS.items() if p not in prompts})


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ANSWERS))
    return path


@pytest.fixture
def run(monkeypatch, prompts, tmp_path):
    """``run(engine, *extra flags)`` -> exit status of genprm-generate over ``prompts`` into
    tmp_path/out.jsonl (or the --output given)."""

    def run(engine, *flags: str) -> int:
        monkeypatch.setattr(generate, "engine_from_args", lambda parser, args: engine)
        output = [] if "--output" in flags else ["--output", str(tmp_path / "out.jsonl")]
        argv = ["--input", str(prompts), "--batch-size", "3", "--temperature", "0", *output]
        return generate.main([*argv, *flags])

    return run


def indices(path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()]


def test_a_rerun_completes_what_failed_batches_left_as_an_uninterrupted_run_would(
    run, tmp_path, capsys
):
    output = tmp_path / "out.jsonl"
    assert run(without("q2", "q5")) == 1  # the first batch (q0-q2) fails at q2
    assert indices(output) == [0, 1]
    assert f"2 of 7 results are in {output}; rerun" in capsys.readouterr().err
    assert run(without("q5")) == 1  # q2-q4 finish, the batch q5-q6 fails at q5
    assert indices(output) == [0, 1, 2, 3, 4, 6]
    last = without()
    assert run(last) == 0
    assert last.prompts == ["q5"]  # only what was missing
    assert run(without(), "--output", str(tmp_path / "whole.jsonl")) == 0
    assert output.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert indices(output) == list(range(7))
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert lines[5] == {
        "index": 5,
        "prompt": "q5",
        "samples": [{"text": "answer 5", "finish_reason": "stop", "tokens": 8}],
    }


def test_a_complete_output_is_left_as_it_is(run, tmp_path, capsys):
    assert run(without()) == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    idle = without()
    assert run(idle) == 0
    assert idle.prompts == [] and (tmp_path / "out.jsonl").read_bytes() == before
    assert "7 of 7 already in" in capsys.readouterr().err


def test_a_torn_last_line_is_generated_again(run, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert run(without()) == 0
    whole = output.read_bytes()
    lines = whole.splitlines(keepends=True)
    output.write_bytes(b"".join(lines[:3]) + lines[3][:12])  # killed while writing index 3
    again = without()
    assert run(again) == 0
    assert "3 of 7 already" in capsys.readouterr().err
    assert again.prompts == ["q3", "q4", "q5", "q6"]
    assert output.read_bytes() == whole


def test_a_changed_input_is_refused(run, prompts, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert run(without("q4")) == 1
    partial = output.read_bytes()
    prompts.write_text(prompts.read_text().replace("q6", "q6 changed"))
    capsys.readouterr()
    assert run(without()) == 2
    message = capsys.readouterr().err
    assert f"refusing to resume {output}: the input changed" in message
    assert "out.jsonl.resume.json" in message
    assert output.read_bytes() == partial


def test_changed_sampling_settings_are_refused(run, tmp_path, capsys):
    assert run(without("q4")) == 1
    capsys.readouterr()
    assert run(without(), "--temperature", "0.5", "--max-tokens", "9") == 2
    message = capsys.readouterr().err
    assert f"refusing to resume {tmp_path / 'out.jsonl'}: the sampling settings" in message
    assert "temperature 0.0 -> 0.5" in message and "max_tokens 256 -> 9" in message


def test_changed_prompt_flags_are_refused(monkeypatch, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    monkeypatch.setattr(generate, "engine_from_args", lambda parser, args: without("q1"))
    argv = ["--output", str(output), "--prompt", "q0", "--prompt", "q1"]
    assert generate.main(argv) == 1
    capsys.readouterr()
    assert generate.main([*argv, "--chat"]) == 2
    assert f"refusing to resume {output}: the input changed" in capsys.readouterr().err
    assert generate.main(argv[:-1] + ["q2"]) == 2
    monkeypatch.setattr(generate, "engine_from_args", lambda parser, args: without())
    assert generate.main(argv) == 0
    assert indices(output) == [0, 1]


def test_an_output_without_its_fingerprint_is_refused(run, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({"index": 0, "prompt": "q0", "samples": []}) + "\n")
    assert run(without()) == 2
    assert f"cannot resume {output}: no readable out.jsonl.resume.json" in capsys.readouterr().err


def test_finished_results_of_a_failed_batch_reach_stdout_too(monkeypatch, capsys):
    monkeypatch.setattr(generate, "engine_from_args", lambda parser, args: without("q1"))
    assert generate.main(["--prompt", "q0", "--prompt", "q1", "--prompt", "q2"]) == 1
    captured = capsys.readouterr()
    assert [json.loads(line)["index"] for line in captured.out.splitlines()] == [0, 2]
    assert "1 of 3 requests failed" in captured.err


def test_a_bad_input_line_is_named(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert generate.main(["--input", str(prompts)]) == 2
    assert f"{prompts}:2:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine", "openai"], "--engine openai needs at least one --base-url"),
        (["--engine", "vllm", "--base-url", "http://x/v1"], "--base-url is for --engine openai"),
        (["--base-url", "http://x/v1"], "--base-url is for --engine openai"),  # vllm: the default
        (["--engine", "openai", "--base-url", "u", "--tp", "2"], "--tp is for --engine vllm"),
    ],
)
def test_engine_flags_that_do_not_fit_the_engine_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        generate.main(["--prompt", "hi", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: genprm-generate")
    assert err.rstrip().endswith(f"genprm-generate: error: {message}")


# -- the output, checked and held before the engine starts -----------------------------------


@pytest.fixture
def no_engine(monkeypatch):
    def refuse(parser, args):
        raise AssertionError("the engine was started")

    monkeypatch.setattr(generate, "engine_from_args", refuse)


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs (as root a read-only bind or chmod would not stop writes)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.root
def test_an_output_on_a_read_only_file_system_is_refused_before_the_engine(
    no_engine, prompts, read_only, capsys
):
    output = read_only / "out.jsonl"
    assert generate.main(["--input", str(prompts), "--output", str(output)]) == 2
    assert error_line(capsys) == (
        f"genprm-generate: cannot write to {output}: Read-only file system"
    )


def test_an_output_that_is_a_folder_or_the_input_is_refused_before_the_engine(
    no_engine, prompts, tmp_path, capsys
):
    assert generate.main(["--input", str(prompts), "--output", str(tmp_path)]) == 2
    assert error_line(capsys) == f"genprm-generate: {tmp_path} is a folder, not a file"
    before = prompts.read_bytes()
    assert generate.main(["--input", str(prompts), "--output", str(prompts)]) == 2
    assert "is the input file" in error_line(capsys)
    assert prompts.read_bytes() == before


def test_a_second_writer_of_an_output_is_refused(no_engine, prompts, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    with output_lock(output):  # another run holds it (an open of its own: flock)
        assert generate.main(["--input", str(prompts), "--output", str(output)]) == 2
    assert f"{output} is being written by pid {os.getpid()}" in error_line(capsys)
    assert not output.exists()


def test_the_lock_goes_with_the_run(run, tmp_path):
    assert run(without()) == 0
    with output_lock(tmp_path / "out.jsonl"):  # free again: taken at once
        pass


def test_an_empty_input_says_so(no_engine, tmp_path, capsys):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("\n")
    assert generate.main(["--input", str(empty), "--output", str(tmp_path / "out.jsonl")]) == 0
    assert error_line(capsys) == f"genprm-generate: no prompts in {empty}; nothing to do"


@pytest.mark.root
def test_a_disk_full_mid_run_keeps_what_was_written_and_a_rerun_completes_it(
    monkeypatch, prompts, tmp_path, capsys
):
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], check=True)
    try:
        output = folder / "out.jsonl"
        long = ScriptedEngine({prompt: answer * 400 for prompt, answer in ANSWERS.items()})
        monkeypatch.setattr(generate, "engine_from_args", lambda parser, args: long)
        argv = ["--input", str(prompts), "--output", str(output), "--batch-size", "1"]
        argv += ["--max-tokens", "5000"]
        assert generate.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"cannot write to {output}: No space left on device" in err
        assert f"the results written before are kept in {output}" in err
        kept = [json.loads(line)["index"] for line in output.read_text().splitlines()[:-1]]
        assert kept and len(kept) < len(ANSWERS)
        subprocess.run(["mount", "-o", "remount,size=1m", str(folder)], check=True)
        asked = len(long.prompts)
        assert generate.main(argv) == 0
        assert indices(output) == list(range(len(ANSWERS)))
        assert long.prompts[asked:] == [f"q{i}" for i in range(len(ANSWERS)) if i not in kept]
    finally:
        subprocess.run(["umount", str(folder)], check=False)
