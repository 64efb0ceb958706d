"""The synthesis driver without an engine: resumable outputs, input errors, shards, and how a
stage's failures end a run."""

import asyncio
import json

import pytest

from data_synthesis.runner import StageFailed, run_stage
from data_synthesis.stage import Stage, StageError, StageResult
from data_synthesis.store import StageOutput, companion, read_records
from genprm.backends import EngineError
from genprm.jsonl import InputError
from genprm.runs import ResumeError
from genprm.shards import in_shard, parse_shard


class Doubling(Stage):
    """Two records out per record in; ids in ``reject`` are bad records, ``fail`` an engine
    failure; ``odd`` numbers are dropped on purpose."""

    name = "double"
    needs = ("id", "n")

    def __init__(self, reject=(), fail=(), tag="a"):
        self.reject, self.fail, self.tag, self.seen = set(reject), set(fail), tag, []

    def settings(self):
        return {"tag": self.tag}

    async def process(self, record):
        await asyncio.sleep(0)
        self.seen.append(record["id"])
        if record["id"] in self.reject:
            raise StageError("n is not a number")
        if record["id"] in self.fail:
            raise EngineError("server gone")
        out = [{"id": f"{record['id']}-{i}", "n": record["n"] * 2 + i} for i in range(2)]
        dropped = [{**r, "drop_reason": "odd"} for r in out if r["n"] % 2]
        kept = [r for r in out if not r["n"] % 2]
        return StageResult(kept, {"solutions": len(kept), "dropped": len(dropped)}, dropped)


def records(count):
    return [{"id": f"r{i}", "n": i} for i in range(count)]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_run_writes_records_dropped_records_and_the_ledger(tmp_path):
    output = tmp_path / "double.jsonl"
    summary = run_stage(Doubling(), records(3), output, progress=False)
    assert [r["id"] for r in lines(output)] == ["r0-0", "r1-0", "r2-0"]
    assert [r["drop_reason"] for r in lines(companion(output, "dropped.jsonl"))] == ["odd"] * 3
    ledger = lines(companion(output, "done.jsonl"))
    assert [entry["id"] for entry in ledger] == ["r0", "r1", "r2"]
    assert ledger[0] == {
        "id": "r0",
        "outputs": ["r0-0"],
        "dropped": ["r0-1"],
        "stats": {"solutions": 1, "dropped": 1},
    }
    assert summary.totals == {"solutions": 3, "dropped": 3}
    assert (summary.inputs, summary.finished) == (3, 3)


def test_a_rerun_skips_finished_inputs_and_keeps_their_records(tmp_path):
    output = tmp_path / "double.jsonl"
    run_stage(Doubling(), records(2), output, progress=False)
    before = output.read_bytes()
    stage = Doubling()
    summary = run_stage(stage, records(4), output, progress=False)
    assert stage.seen == ["r2", "r3"]
    assert output.read_bytes().startswith(before)
    assert [r["id"] for r in lines(output)] == ["r0-0", "r1-0", "r2-0", "r3-0"]
    assert summary.totals["solutions"] == 4


def test_records_without_a_ledger_line_and_torn_lines_are_redone(tmp_path):
    """A kill between the records and the ledger line, and one in the middle of a line."""
    output = tmp_path / "double.jsonl"
    run_stage(Doubling(), records(2), output, progress=False)
    with output.open("a") as extra:
        extra.write(json.dumps({"id": "r2-0", "n": 4}) + "\n" + '{"id": "r3-0", "n"')
    ledger = companion(output, "done.jsonl")
    with ledger.open("a") as extra:
        extra.write('{"id": "r2", "outp')
    stage = Doubling()
    run_stage(stage, records(4), output, progress=False)
    assert stage.seen == ["r2", "r3"]
    ids = [r["id"] for r in lines(output)]
    assert sorted(ids) == ["r0-0", "r1-0", "r2-0", "r3-0"] and len(set(ids)) == len(ids)
    assert [entry["id"] for entry in lines(ledger)] == ["r0", "r1", "r2", "r3"]


def test_other_settings_are_refused(tmp_path):
    output = tmp_path / "double.jsonl"
    run_stage(Doubling(tag="a"), records(1), output, progress=False)
    with pytest.raises(ResumeError, match=r"settings changed \(tag 'a' -> 'b'\)"):
        run_stage(Doubling(tag="b"), records(1), output, progress=False)


def test_a_bad_record_stops_the_run_or_is_skipped(tmp_path):
    output = tmp_path / "double.jsonl"
    with pytest.raises(StageFailed, match="record id='r1': n is not a number"):
        run_stage(Doubling(reject={"r1"}), records(3), output, concurrency=1, progress=False)
    done = [entry["id"] for entry in lines(companion(output, "done.jsonl"))]
    assert "r0" in done and "r1" not in done  # records already in flight may finish
    summary = run_stage(
        Doubling(reject={"r1"}), records(3), output, skip_invalid=True, progress=False
    )
    assert len(summary.skipped) == 1 and "r1" in summary.skipped[0]
    assert (summary.inputs, summary.finished) == (3, 2)


def test_an_engine_failure_keeps_finished_work_and_says_how_to_resume(tmp_path):
    output = tmp_path / "double.jsonl"
    with pytest.raises(StageFailed, match="rerun the same command to resume"):
        run_stage(Doubling(fail={"r2"}), records(4), output, concurrency=1, progress=False)
    done = [entry["id"] for entry in lines(companion(output, "done.jsonl"))]
    assert done[:2] == ["r0", "r1"] and "r2" not in done
    stage = Doubling()
    run_stage(stage, records(4), output, progress=False)
    assert stage.seen == [r["id"] for r in records(4) if r["id"] not in done]
    assert len(lines(output)) == 4


def test_read_records_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "n": 1}\n\nnot json\n{"id": "b"}\n{"id": "a", "n": 2}\n[1]\n')
    with pytest.raises(InputError, match=r"in.jsonl:3: not JSON"):
        read_records(path, ("id", "n"))
    kept, errors = read_records(path, ("id", "n"), skip_invalid=True)
    assert [r["id"] for r in kept] == ["a"]
    assert [e.split(": ", 1)[0].rsplit("/", 1)[1] for e in errors] == [
        "in.jsonl:3",
        "in.jsonl:4",
        "in.jsonl:5",
        "in.jsonl:6",
    ]
    assert "missing 'n'" in errors[1] and "duplicate id 'a' (first on line 1)" in errors[2]


def test_shards_partition_the_input(tmp_path):
    items = records(7)
    shards = [in_shard(items, (i, 3)) for i in range(3)]
    assert sorted(r["id"] for shard in shards for r in shard) == sorted(r["id"] for r in items)
    for bad in ("3/3", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    outputs = []
    for i in range(3):
        output = tmp_path / f"shard{i}.jsonl"
        run_stage(Doubling(), shards[i], output, progress=False)
        outputs += lines(output)
    whole = tmp_path / "whole.jsonl"
    run_stage(Doubling(), items, whole, progress=False)
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(outputs, key=key) == sorted(lines(whole), key=key)


def test_the_output_opens_only_with_readable_settings(tmp_path):
    output = tmp_path / "double.jsonl"
    run_stage(Doubling(), records(1), output, progress=False)
    companion(output, "settings.json").unlink()
    with pytest.raises(ResumeError, match="no readable"):
        StageOutput(output, {"tag": "a"})
