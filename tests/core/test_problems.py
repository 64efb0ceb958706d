"""genprm.problems: problem inputs (GSM8K, MATH-500, parquet, saved HF datasets), bad rows named
by file and line."""

import json

from genprm.problems import ProblemFields, load_problems
from tests.support.paths import SHARED_DATA


def test_gsm8k_and_math500_work_with_the_default_fields():
    gsm8k, errors = load_problems(str(SHARED_DATA / "gsm8k" / "test.jsonl"), limit=3)
    assert not errors
    assert [r["id"] for r in gsm8k] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert gsm8k[0]["answer"] == "18" and gsm8k[0]["problem"].startswith("Janet")
    math500, errors = load_problems(str(SHARED_DATA / "math500" / "test.jsonl"), limit=2)
    assert not errors
    first = json.loads((SHARED_DATA / "math500" / "test.jsonl").read_text().splitlines()[0])
    assert math500[0] == {
        "id": "math500-test-0",
        "problem": first["problem"],
        "answer": first["answer"],
    }


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"question": "1+1?", "answer": "#### 2"},
        {"question": "no answer"},
        "text",
        {"problem": "2+2?", "answer": 4},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    records, errors = load_problems(str(path))
    prefix = f"{tmp_path.name}-p"
    assert [(r["id"], r["answer"]) for r in records] == [(f"{prefix}-0", "2"), (f"{prefix}-3", "4")]
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in errors] == ["2", "3", "5"]
    assert "no reference answer in 'answer'" in errors[0]
    assert "not JSON" in errors[2]


def test_parquet_and_saved_datasets_with_configured_fields(tmp_path):
    import datasets

    rows = [{"uid": "a", "q": "1+1?", "sol": r"so \boxed{2}"}, {"uid": "b", "q": "3?", "sol": "3"}]
    fields = ProblemFields(problem_field="q", answer_field="sol", id_field="uid")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "saved")
    )
    for source in (tmp_path / "p.parquet", tmp_path / "saved"):
        records, errors = load_problems(str(source), fields)
        assert not errors
        assert records == [
            {"id": "a", "problem": "1+1?", "answer": "2"},
            {"id": "b", "problem": "3?", "answer": "3"},
        ]
