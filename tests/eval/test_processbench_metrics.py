"""ProcessBench loading, the metric (checked on hand-computed cases) and predictions files."""

import json
import sys

import pytest

from eval.processbench.data import DEFAULT_DATA_DIR, SPLITS, Row, load_splits
from eval.processbench.metrics import read_predictions, score, score_predictions, split_metrics

# From shared/data/processbench/README.md.
SPLIT_SIZES = {"gsm8k": 400, "math": 1000, "olympiadbench": 1000, "omnimath": 1000}
CORRECT_ROWS = {"gsm8k": 193, "math": 406, "olympiadbench": 339, "omnimath": 241}


def rows_of(split: str, labels: list[int]) -> list[Row]:
    return [
        Row(id=f"{split}-{i}", split=split, problem="p", steps=["a", "b", "c", "d"], label=label)
        for i, label in enumerate(labels)
    ]


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- split_metrics ---------------------------------------------------------------------------


def test_hand_computed_mixed_split():
    labels = [-1, -1, -1, 0, 2, 1, 3]
    predictions = [-1, -1, 0, 0, 2, None, 1]
    # correct rows (label -1): 2 of 3 predicted -1         -> acc_corr = 66.67
    # erroneous rows: 0->0 and 2->2 right, None and 1 wrong -> acc_err  = 2/4 = 50
    # F1 = 2 * 50 * 200/3 / (50 + 200/3) = 20000/350 = 400/7 = 57.14
    assert split_metrics(labels, predictions) == {
        "n": 7,
        "acc_err": 50.0,
        "acc_corr": pytest.approx(200 / 3),
        "f1": pytest.approx(400 / 7),
    }


def test_a_near_miss_is_wrong():
    # The earliest error must be found exactly: flagging a later or earlier step is wrong, and
    # calling an erroneous solution correct (-1) is wrong too.
    # acc_err = 1/4 = 25 (only label 1 -> 1); acc_corr = 1/1 = 100; F1 = 2*25*100/125 = 40
    metrics = split_metrics([2, 2, 2, 1, -1], [3, 1, -1, 1, -1])
    assert metrics == {"n": 5, "acc_err": 25.0, "acc_corr": 100.0, "f1": 40.0}


def test_perfect_and_all_wrong():
    labels = [-1, 0, 3, -1]
    assert split_metrics(labels, labels) == {"n": 4, "acc_err": 100, "acc_corr": 100, "f1": 100}
    wrong = split_metrics(labels, [0, 1, -1, 2])
    assert wrong == {"n": 4, "acc_err": 0.0, "acc_corr": 0.0, "f1": 0.0}


def test_none_is_wrong_on_both_subsets():
    assert split_metrics([-1, 0], [None, None]) == {
        "n": 2,
        "acc_err": 0.0,
        "acc_corr": 0.0,
        "f1": 0.0,
    }
    # One None among right answers: acc_corr = 1/2 = 50, acc_err = 100, F1 = 2*50*100/150
    metrics = split_metrics([-1, -1, 1], [-1, None, 1])
    assert (metrics["acc_corr"], metrics["acc_err"]) == (50.0, 100.0)
    assert metrics["f1"] == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    "labels, predictions, expected",
    [
        # Only correct rows, all right: acc_corr 100, the empty erroneous subset counts 0.
        ([-1, -1], [-1, -1], {"n": 2, "acc_err": 0.0, "acc_corr": 100.0, "f1": 0.0}),
        # Only erroneous rows, all right: acc_err 100, the empty correct subset counts 0.
        ([0, 2], [0, 2], {"n": 2, "acc_err": 100.0, "acc_corr": 0.0, "f1": 0.0}),
        ([], [], {"n": 0, "acc_err": 0.0, "acc_corr": 0.0, "f1": 0.0}),
    ],
)
def test_an_empty_subset_has_accuracy_zero(labels, predictions, expected):
    assert split_metrics(labels, predictions) == expected


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        split_metrics([-1, 0, 1], [-1, 0])


# --- score -----------------------------------------------------------------------------------


def test_score_averages_the_split_f1s_unweighted():
    rows = {
        "gsm8k": rows_of("gsm8k", [-1, 0]),  # both right: F1 100
        "math": rows_of("math", [-1, -1, -1, 1, 1, 1, 1, 1]),  # see below
    }
    predictions = {"gsm8k-0": -1, "gsm8k-1": 0, "math-0": -1, "math-3": 1, "math-4": 1}
    # math: acc_corr = 1/3 (math-1, math-2 missing -> wrong), acc_err = 2/5 (math-5..7 missing)
    # F1 = 2 * (100/3) * 40 / (100/3 + 40) = (8000/3) / (220/3) = 400/11 = 36.36
    result = score(rows, predictions)
    assert list(result) == ["splits", "average_f1"]
    assert result["splits"]["gsm8k"] == {"n": 2, "acc_err": 100.0, "acc_corr": 100.0, "f1": 100.0}
    assert result["splits"]["math"]["f1"] == pytest.approx(400 / 11)
    # The plain mean of the two F1s, not weighted by split size (2 and 8 rows).
    assert result["average_f1"] == pytest.approx((100 + 400 / 11) / 2)


def test_score_counts_missing_ids_wrong():
    rows = {"gsm8k": rows_of("gsm8k", [-1, 0])}
    assert score(rows, {}) == {
        "splits": {"gsm8k": {"n": 2, "acc_err": 0.0, "acc_corr": 0.0, "f1": 0.0}},
        "average_f1": 0.0,
    }


def test_score_needs_a_split():
    with pytest.raises(ValueError, match="no splits"):
        score({}, {})


# --- load_splits -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processbench():
    return load_splits(DEFAULT_DATA_DIR)


def test_default_data_dir_is_the_shared_copy():
    assert DEFAULT_DATA_DIR.name == "processbench"
    assert (DEFAULT_DATA_DIR / "README.md").is_file()


def test_the_shared_data_matches_its_readme(processbench):
    assert list(processbench) == list(SPLITS)
    assert {split: len(rows) for split, rows in processbench.items()} == SPLIT_SIZES
    correct = {split: sum(r.label == -1 for r in rows) for split, rows in processbench.items()}
    assert correct == CORRECT_ROWS
    ids = [row.id for rows in processbench.values() for row in rows]
    assert len(set(ids)) == len(ids) == 3400
    assert all(row.split == split for split, rows in processbench.items() for row in rows)


def test_rows_keep_file_order_and_content(processbench):
    raw = json.loads((DEFAULT_DATA_DIR / "math.jsonl").read_text().splitlines()[0])
    first = processbench["math"][0]
    assert first == Row(
        id=raw["id"], split="math", problem=raw["problem"], steps=raw["steps"], label=raw["label"]
    )


def test_limit_keeps_the_first_rows_of_each_split(processbench):
    sliced = load_splits(DEFAULT_DATA_DIR, splits=["omnimath", "gsm8k"], limit=5)
    assert list(sliced) == ["omnimath", "gsm8k"]
    for split, rows in sliced.items():
        assert rows == processbench[split][:5]
    assert load_splits(DEFAULT_DATA_DIR, splits=["math"], limit=0) == {"math": []}


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_a_bad_limit_is_refused(limit):
    with pytest.raises(ValueError, match="limit must be"):
        load_splits(DEFAULT_DATA_DIR, limit=limit)


def test_unknown_split_names_list_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_splits(DEFAULT_DATA_DIR, splits=["gsm8k", "aime"])
    assert "aime" in str(error.value)
    assert all(split in str(error.value) for split in SPLITS)


GOOD = {"id": "gsm8k-0", "problem": "1+1?", "steps": ["1+1=2", "So 2."], "label": -1}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object"),
        (json.dumps({**GOOD, "id": None}), "`id` must be a non-empty string"),
        (json.dumps({**GOOD, "id": ""}), "`id` must be a non-empty string"),
        (json.dumps({**GOOD, "id": 7}), "`id` must be a non-empty string"),
        (json.dumps({**GOOD, "id": "gsm8k-0"}), "already used at .*gsm8k.jsonl:1"),
        (json.dumps({**GOOD, "id": "x", "problem": None}), "`problem` must be a string"),
        (json.dumps({**GOOD, "id": "x", "steps": []}), "`steps` must be a non-empty list"),
        (json.dumps({**GOOD, "id": "x", "steps": "a"}), "`steps` must be a non-empty list"),
        (json.dumps({**GOOD, "id": "x", "steps": ["a", 2]}), "`steps` must be a non-empty list"),
        (json.dumps({**GOOD, "id": "x", "label": None}), "`label` must be an integer"),
        (json.dumps({**GOOD, "id": "x", "label": True}), "`label` must be an integer"),
        (json.dumps({**GOOD, "id": "x", "label": "1"}), "`label` must be an integer"),
        (json.dumps({**GOOD, "id": "x", "label": 1.0}), "`label` must be an integer"),
        (json.dumps({**GOOD, "id": "x", "label": 2}), r"from -1 to 1 \(the row has 2 steps\)"),
        (json.dumps({**GOOD, "id": "x", "label": -2}), "`label` must be an integer from -1"),
    ],
)
def test_a_malformed_row_is_refused_with_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "gsm8k.jsonl", [json.dumps(GOOD), "", bad])
    with pytest.raises(ValueError, match=message) as error:
        load_splits(tmp_path, splits=["gsm8k"])
    assert str(error.value).startswith(f"{path}:3: ")


def test_rows_past_the_limit_are_not_read(tmp_path):
    write_lines(tmp_path / "gsm8k.jsonl", [json.dumps(GOOD), "{not json"])
    assert [row.id for row in load_splits(tmp_path, splits=["gsm8k"], limit=1)["gsm8k"]] == [
        "gsm8k-0"
    ]


def test_ids_are_unique_across_splits(tmp_path):
    write_lines(tmp_path / "gsm8k.jsonl", [json.dumps(GOOD)])
    math = write_lines(tmp_path / "math.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ValueError, match=f"^{math}:1: id 'gsm8k-0' was already used at .*:1$"):
        load_splits(tmp_path, splits=["gsm8k", "math"])


def test_a_folder_missing_a_split_file_says_which(tmp_path):
    write_lines(tmp_path / "gsm8k.jsonl", [json.dumps(GOOD)])
    with pytest.raises(FileNotFoundError, match="math.jsonl: no such file"):
        load_splits(tmp_path, splits=["gsm8k", "math"])


def test_a_dataset_id_is_loaded_with_datasets(monkeypatch):
    import datasets

    calls = []

    def load_dataset(source, split):
        calls.append((source, split))
        return [{**GOOD, "id": f"{split}-0", "generator": "m", "final_answer_correct": True}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    loaded = load_splits("Qwen/ProcessBench", splits=["gsm8k", "math"])
    assert calls == [("Qwen/ProcessBench", "gsm8k"), ("Qwen/ProcessBench", "math")]
    assert loaded["math"] == [Row("math-0", "math", GOOD["problem"], GOOD["steps"], -1)]

    monkeypatch.setattr(datasets, "load_dataset", lambda source, split: [GOOD, {**GOOD}])
    with pytest.raises(ValueError, match=r"^Qwen/ProcessBench\[gsm8k\]\[1\]: id 'gsm8k-0'"):
        load_splits("Qwen/ProcessBench", splits=["gsm8k"])


def test_without_datasets_a_dataset_id_gets_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ValueError, match="needs the `datasets` package, which is not installed"):
        load_splits(tmp_path / "empty")


# --- predictions files -----------------------------------------------------------------------


def test_read_predictions_ignores_other_keys_and_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "predictions.jsonl",
        [
            json.dumps({"id": "a", "prediction": 2, "label": 2, "rewards": [0.9, 0.8, 0.1]}),
            "",
            "   ",
            json.dumps({"id": "b", "prediction": None, "raw": "no box"}),
            json.dumps({"id": "c", "prediction": -1}),
        ],
    )
    assert read_predictions(path) == {"a": 2, "b": None, "c": -1}


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "b", "prediction": 1', "not valid JSON"),
        ('["b", 1]', 'expected an object with "id" and "prediction"'),
        ('"b"', 'expected an object with "id" and "prediction"'),
        ('{"prediction": 1}', "`id` must be a non-empty string, got None"),
        ('{"id": 3, "prediction": 1}', "`id` must be a non-empty string, got 3"),
        ('{"id": "", "prediction": 1}', "`id` must be a non-empty string"),
        ('{"id": "b"}', "no `prediction`"),
        ('{"id": "b", "prediction": "1"}', "`prediction` must be an integer or null, got '1'"),
        ('{"id": "b", "prediction": 1.0}', "`prediction` must be an integer or null, got 1.0"),
        ('{"id": "b", "prediction": false}', "`prediction` must be an integer or null, got False"),
        ('{"id": "b", "prediction": [1]}', "`prediction` must be an integer or null"),
        ('{"id": "a", "prediction": 1}', "id 'a' was already predicted at"),
    ],
)
def test_a_malformed_prediction_line_names_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "prediction": 0}', "", bad])
    with pytest.raises(ValueError, match=message) as error:
        read_predictions(path)
    assert str(error.value).startswith(f"{path}:3: ")


def test_score_predictions_reports_missing_and_unknown_ids(tmp_path):
    rows = {"gsm8k": rows_of("gsm8k", [-1, 0, 1]), "math": rows_of("math", [-1])}
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"id": "gsm8k-0", "prediction": -1}),
            json.dumps({"id": "gsm8k-1", "prediction": None}),
            json.dumps({"id": "zz-9", "prediction": 0}),
            json.dumps({"id": "math-7", "prediction": -1}),
        ],
    )
    result, coverage = score_predictions(path, rows)
    # gsm8k-2 and math-0 have no prediction; zz-9 and math-7 are not rows.
    assert coverage == {"missing": 2, "unknown": ["math-7", "zz-9"]}
    assert result == score(rows, {"gsm8k-0": -1, "gsm8k-1": None})
    # gsm8k: acc_corr 100, acc_err 0 (None, missing) -> F1 0; math: nothing right -> F1 0
    assert result["splits"]["gsm8k"] == {"n": 3, "acc_err": 0.0, "acc_corr": 100.0, "f1": 0.0}
