"""The ProcessBench metric (``shared/spec/processbench.md``), in percent.

Per split: ``acc_err`` is the share of erroneous rows (label >= 0) whose prediction is exactly
the label, ``acc_corr`` the share of correct rows (label == -1) predicted -1, and ``f1`` their
harmonic mean. The headline ``average_f1`` is the plain mean of the split F1s. A prediction of
None (the verifier's answer could not be parsed) is wrong on either subset.

An empty subset (a small slice with no correct rows, say) has accuracy 0.0 by convention: there
is nothing to be right about, and a slice that cannot show both skills should not score well.
The report says when a subset was empty.

>>> split_metrics([-1, -1, 2, 0], [-1, 1, 2, None])
{'n': 4, 'acc_err': 50.0, 'acc_corr': 50.0, 'f1': 50.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .data import Row, jsonl_records


def split_metrics(labels: list[int], predictions: list[int | None]) -> dict:
    """``{"n", "acc_err", "acc_corr", "f1"}`` for one split; ``predictions[i]`` judges the
    row labelled ``labels[i]``."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    erroneous = [(label, p) for label, p in zip(labels, predictions) if label >= 0]
    correct = [(label, p) for label, p in zip(labels, predictions) if label == -1]
    acc_err, acc_corr = _percent_right(erroneous), _percent_right(correct)
    f1 = 2 * acc_err * acc_corr / (acc_err + acc_corr) if acc_err + acc_corr else 0.0
    return {"n": len(labels), "acc_err": acc_err, "acc_corr": acc_corr, "f1": f1}


def _percent_right(pairs: list[tuple[int, int | None]]) -> float:
    if not pairs:
        return 0.0
    return 100 * sum(label == prediction for label, prediction in pairs) / len(pairs)


def score(rows: dict[str, list[Row]], predictions: Mapping[str, int | None]) -> dict:
    """``{"splits": {split: split_metrics}, "average_f1"}``; a row whose id is not in
    ``predictions`` counts as wrong."""
    if not rows:
        raise ValueError("no splits to score")
    splits = {
        split: split_metrics(
            [r.label for r in split_rows], [predictions.get(r.id) for r in split_rows]
        )
        for split, split_rows in rows.items()
    }
    average_f1 = sum(metrics["f1"] for metrics in splits.values()) / len(splits)
    return {"splits": splits, "average_f1": average_f1}


def read_predictions(path: Path | str) -> dict[str, int | None]:
    """The ``{"id": str, "prediction": int | null}`` lines of a JSONL file, by id (other keys
    are ignored, so an evaluator's own output file can be read as it is)."""
    return _read_predictions(Path(path))[0]


def _read_predictions(path: Path) -> tuple[dict[str, int | None], dict[str, str]]:
    """:func:`read_predictions`, and the ``FILE:LINE`` of each id's prediction."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a predictions file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    predictions: dict[str, int | None] = {}
    first_where: dict[str, str] = {}  # id -> FILE:LINE of its prediction
    for where, record in jsonl_records(path):
        if not isinstance(record, dict):
            raise ValueError(f'{where}: expected an object with "id" and "prediction"')
        row_id = record.get("id")
        if not isinstance(row_id, str) or not row_id:
            raise ValueError(f"{where}: `id` must be a non-empty string, got {row_id!r}")
        if "prediction" not in record:
            raise ValueError(f"{where}: no `prediction` (an integer, or null if unparsable)")
        prediction = record["prediction"]
        if prediction is not None and (
            isinstance(prediction, bool) or not isinstance(prediction, int)
        ):
            raise ValueError(
                f"{where}: `prediction` must be an integer or null, got {prediction!r}"
            )
        if row_id in predictions:
            raise ValueError(
                f"{where}: id {row_id!r} was already predicted at {first_where[row_id]}"
            )
        predictions[row_id] = prediction
        first_where[row_id] = where
    return predictions, first_where


def score_predictions(path: Path | str, rows: dict[str, list[Row]]) -> tuple[dict, dict]:
    """Score the predictions file ``path`` on ``rows``: ``(score(...), coverage)``, where
    ``coverage`` is ``{"missing": rows without a prediction (counted wrong), "unknown": sorted
    ids in the file that are not among the rows (not scored)}``. A prediction that is neither
    -1 nor a step of its row is a ValueError naming its file and line."""
    predictions, where = _read_predictions(Path(path))
    steps = {row.id: len(row.steps) for split_rows in rows.values() for row in split_rows}
    for row_id, prediction in predictions.items():
        count = steps.get(row_id)
        if count is not None and prediction is not None and not -1 <= prediction < count:
            raise ValueError(
                f"{where[row_id]}: the prediction for {row_id!r} must be -1 or a step index "
                f"0..{count - 1} (its row has {count} steps), got {prediction}"
            )
    ids = steps.keys()
    coverage = {
        "missing": len(ids - predictions.keys()),
        "unknown": sorted(predictions.keys() - ids),
    }
    return score(rows, predictions), coverage
