"""The ProcessBench report: the paper's reference F1s, the trivial baselines, the four files."""

import json
import re

import pytest

from eval.processbench.data import DEFAULT_DATA_DIR, SPLITS, Row, load_splits
from eval.processbench.metrics import score
from eval.processbench.report import COLUMNS, REFERENCE, trivial_baselines, write_report
from tests.support.paths import SPECS

SPEC = SPECS / "processbench.md"
FILES = {"metrics.json", "settings.json", "report.md", "f1_per_split.png"}


def spec_reference_table() -> tuple[list[str], dict[str, tuple[float, ...]]]:
    """The header and the rows of the spec's "Reference F1" table."""
    section = SPEC.read_text().split("## Reference F1", 1)[1]
    table = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    header, body = cells[0], [row for row in cells[2:] if not row[0].startswith("---")]
    return header, {row[0]: tuple(float(value) for value in row[1:]) for row in body}


def test_reference_constants_match_the_spec_table():
    header, rows = spec_reference_table()
    assert header == ["verifier", *COLUMNS, "Avg"]
    assert REFERENCE == rows
    assert len(COLUMNS) == len(SPLITS)


@pytest.fixture(scope="module")
def processbench():
    return load_splits(DEFAULT_DATA_DIR)


def test_trivial_baselines_on_the_data(processbench):
    baselines = trivial_baselines(processbench)
    assert list(baselines) == ["always -1", "always 0"]
    for split in SPLITS:
        assert baselines["always -1"]["splits"][split] == {
            "n": len(processbench[split]),
            "acc_err": 0.0,
            "acc_corr": 100.0,
            "f1": 0.0,
        }
        # "always 0" is right exactly on the rows whose first step is already wrong.
        erroneous = [row for row in processbench[split] if row.label >= 0]
        first_step = sum(row.label == 0 for row in erroneous)
        always_0 = baselines["always 0"]["splits"][split]
        assert always_0["acc_err"] == pytest.approx(100 * first_step / len(erroneous))
        assert (always_0["acc_corr"], always_0["f1"]) == (0.0, 0.0)
    assert baselines["always -1"]["average_f1"] == baselines["always 0"]["average_f1"] == 0.0


def small_rows() -> dict[str, list[Row]]:
    def row(split, i, label):
        return Row(id=f"{split}-{i}", split=split, problem="p", steps=["a", "b", "c"], label=label)

    return {
        "gsm8k": [row("gsm8k", 0, -1), row("gsm8k", 1, 1), row("gsm8k", 2, 0)],
        # A small slice with no correct rows: acc_corr is 0 by convention.
        "math": [row("math", 0, 2), row("math", 1, 0)],
    }


def test_write_report_writes_the_four_files(tmp_path):
    rows = small_rows()
    metrics = score(rows, {"gsm8k-0": -1, "gsm8k-1": 1, "gsm8k-2": 2, "math-0": 2})
    settings = {"verifier": "genprm", "model": tmp_path / "model", "limit": 3, "threshold": 0.5}
    out_dir = tmp_path / "run"
    paths = write_report(
        out_dir, metrics, rows, settings, "GenPRM on a slice", notes=["1 id missing, counted wrong"]
    )

    assert paths == {name: out_dir / name for name in FILES}
    assert {path.name for path in out_dir.iterdir()} == FILES  # no staging files left behind

    written = json.loads(paths["metrics.json"].read_text())
    assert written == metrics
    assert set(written) == {"splits", "average_f1"}
    assert all(set(m) == {"n", "acc_err", "acc_corr", "f1"} for m in written["splits"].values())
    assert json.loads(paths["settings.json"].read_text()) == {
        **settings,
        "model": str(tmp_path / "model"),
    }

    png = paths["f1_per_split.png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    report = paths["report.md"].read_text()
    assert report.startswith("# GenPRM on a slice\n")
    # gsm8k: acc_err 1/2 = 50, acc_corr 1/1 = 100, F1 = 2*50*100/150 = 66.7; math: F1 0
    # Avg 33.3, over 2 of the 4 splits.
    assert "| **this run** | 66.7 | 0.0 | – | – | 33.3 |" in report
    assert "| trivial: always -1 | 0.0 | 0.0 | – | – | 0.0 |" in report
    assert "| paper: GenPRM-7B Maj@8 | 81.0 | 85.7 | 78.4 | 76.8 | 80.5 |" in report
    assert "over its 2 split(s)" in report
    assert "| gsm8k | 3 | 2 | 1 |" in report  # split sizes: rows, erroneous, correct
    assert "| math | 2 | 2 | 0 |" in report
    assert "| gsm8k | **this run** | 50.0 | 100.0 | 66.7 |" in report
    assert "| math | **this run** | 50.0 | 0.0 (no rows) | 0.0 |" in report
    assert "- 1 id missing, counted wrong" in report
    assert "- math: no correct rows (label = -1), so acc_corr is 0 by convention" in report
    assert re.search(r'"threshold": 0\.5', report)


def test_write_report_replaces_an_earlier_report(tmp_path):
    rows = small_rows()
    for predictions in ({}, {"gsm8k-0": -1}):
        metrics = score(rows, predictions)
        paths = write_report(tmp_path, metrics, rows, {}, "run")
    assert json.loads(paths["metrics.json"].read_text()) == metrics


def test_write_report_refuses_metrics_of_other_splits(tmp_path):
    rows = small_rows()
    metrics = score({"gsm8k": rows["gsm8k"]}, {})
    with pytest.raises(ValueError, match="metrics cover splits"):
        write_report(tmp_path, metrics, rows, {}, "run")
    assert list(tmp_path.iterdir()) == []
