"""The run folder every command keeps (genprm.runs): settings checked on a rerun, free keys,
whole-line appends read back with a torn last line cut off, bad lines named by file:line."""

import json

import pytest

from genprm.runs import (
    SETTINGS,
    ResumeError,
    appender,
    prepare,
    read_results,
    stored_settings,
    write_files,
)


def test_prepare_writes_the_settings_and_checks_them_once_work_is_stored(tmp_path):
    out = tmp_path / "run"
    prepare(out, {"n": 4, "subsets": 2}, ["scores.jsonl"])
    assert stored_settings(out) == {"n": 4, "subsets": 2}
    prepare(out, {"n": 8}, ["scores.jsonl"])  # no work yet: a new run may change anything
    appender(out / "scores.jsonl")(b'{"id": "a"}\n')
    with pytest.raises(ResumeError, match=r"n 8 -> 16"):
        prepare(out, {"n": 16}, ["scores.jsonl"])
    prepare(out, {"n": 8, "subsets": 3}, ["scores.jsonl"], free=["subsets"])
    assert json.loads((out / SETTINGS).read_text()) == {"n": 8, "subsets": 3}


def test_unreadable_settings_beside_work_are_refused(tmp_path):
    (tmp_path / "scores.jsonl").write_text('{"id": "a"}\n')
    (tmp_path / SETTINGS).write_text("{not json")
    assert stored_settings(tmp_path) == {}
    with pytest.raises(ResumeError, match="no readable settings.json"):
        prepare(tmp_path, {"n": 1}, ["scores.jsonl"])


def test_read_results_cuts_a_torn_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "results.jsonl"
    assert read_results(path) == []
    write = appender(path)
    write(b'{"id": "a"}\n')
    write(b'{"id": "b"}\n')
    with path.open("ab") as handle:
        handle.write(b'{"id": "c", "tru')  # a kill in the middle of an append
    assert [record["id"] for record in read_results(path)] == ["a", "b"]
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    write(b"[1, 2]\n")
    with pytest.raises(ResumeError, match=rf"^{path}:3: not a JSON object"):
        read_results(path)


def test_write_files_replaces_each_file_whole(tmp_path):
    (tmp_path / "report.md").write_text("old")
    paths = write_files(tmp_path, {"report.md": b"new", "metrics.json": b"{}"})
    assert paths == {"report.md": tmp_path / "report.md", "metrics.json": tmp_path / "metrics.json"}
    assert (tmp_path / "report.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.md"]
