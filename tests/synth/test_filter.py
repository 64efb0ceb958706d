"""The consensus filter (spec §5): agreement keeps a record unchanged; no verdict, disagreement
and a missing needed rationale drop it with a fixed reason; counts; bad records."""

import asyncio

import pytest

from data_synthesis.filter import (
    DISAGREE,
    DROP_REASONS,
    MISSING_RATIONALE,
    NO_VERDICT,
    FilterSettings,
    FilterStage,
)
from data_synthesis.stage import StageError, StageResult
from genprm.format import CodeBlock, render_rationale

STEPS = ["Step 1: 6 * 7 = 42.", "Step 2: 42 + 1 = 44.", "Step 3: The answer is 44."]


def rationale(index: int) -> str:
    return render_rationale(
        index + 1,
        f"Paragraph {index + 1} does one computation; check it.",
        [CodeBlock("print(6 * 7, 42 + 1)", "42 43"), "The output shows the sum is 43.\n"],
        correct=None,
    )


def record(labels, judge, rationales=None, **extra):
    first = labels.index(0) if 0 in labels else -1
    return {
        "id": "s-7",
        "problem": "What is 6 * 7 + 1?",
        "steps": STEPS[: len(labels)],
        "answer": "43",
        "problem_id": "p-7",
        "correct": first == -1,
        "mc": [1.0 if label else 0.0 for label in labels],
        "mc_initial": 0.5,
        "rollouts": [32] * len(labels),
        "k": 32,
        "labels": labels,
        "first_error": first,
        "label_method": "rpe",
        "rationales": [rationale(i) for i in range(len(labels))]
        if rationales is None
        else rationales,
        "judge_first_error": judge,
        "judge_votes": [judge] * 4,
        "rationale_text": "### Paragraph 1\n...",
        **extra,
    }


def run(rec: dict) -> StageResult:
    return asyncio.run(FilterStage(FilterSettings()).process(rec))


ZERO_COUNTS = {
    "kept": 0,
    "dropped": 0,
    "dropped: no verdict": 0,
    "dropped: disagree": 0,
    "dropped: missing rationale": 0,
}


@pytest.mark.parametrize(
    ("labels", "judge"), [([1, 0, 0], 1), ([1, 1, 1], -1), ([0, 1, 1], 0), ([1, 1, 0], 2)]
)
def test_agreement_keeps_the_record_unchanged(labels, judge):
    rec = record(labels, judge)
    result = run(rec)
    assert result.records == [rec] and result.records[0] is rec
    assert result.dropped == []
    assert result.stats == {**ZERO_COUNTS, "kept": 1}


@pytest.mark.parametrize(
    ("labels", "judge", "detail"),
    [
        ([1, 0, 0], 2, "judge_first_error=2, first_error=1"),
        ([1, 1, 1], 0, "judge_first_error=0, first_error=-1"),
        ([1, 0, 1], -1, "judge_first_error=-1, first_error=1"),
        ([1, 1, 1], 7, "judge_first_error=7, first_error=-1"),  # out of range: just disagrees
    ],
)
def test_disagreement_is_dropped_with_both_values(labels, judge, detail):
    rec = record(labels, judge)
    result = run(rec)
    assert result.records == []
    assert result.dropped == [{**rec, "drop_reason": DISAGREE, "drop_detail": detail}]
    assert result.stats == {**ZERO_COUNTS, "dropped": 1, "dropped: disagree": 1}


def test_no_verdict_is_dropped():
    rec = record([1, 0, 0], None, judge_votes=[None, None, None, None])
    result = run(rec)
    assert result.records == []
    [dropped] = result.dropped
    assert dropped["drop_reason"] == NO_VERDICT
    assert dropped["drop_detail"] == "judge_votes=[None, None, None, None]"
    assert result.stats == {**ZERO_COUNTS, "dropped": 1, "dropped: no verdict": 1}


def test_missing_rationale_up_to_the_first_error_is_dropped():
    rationales = [rationale(0), None, rationale(2)]
    result = run(record([1, 0, 1], 1, rationales=rationales))
    [dropped] = result.dropped
    assert dropped["drop_reason"] == MISSING_RATIONALE
    assert dropped["drop_detail"] == "no rationale for steps [1] (0-based)"
    assert result.stats == {**ZERO_COUNTS, "dropped": 1, "dropped: missing rationale": 1}


def test_missing_rationale_after_the_first_error_is_not_needed():
    rec = record([0, 1, 1], 0, rationales=[rationale(0), None, None])
    assert run(rec).records == [rec]


def test_all_correct_needs_every_rationale():
    result = run(record([1, 1, 1], -1, rationales=[rationale(0), rationale(1), None]))
    assert result.dropped[0]["drop_reason"] == MISSING_RATIONALE
    assert result.dropped[0]["drop_detail"] == "no rationale for steps [2] (0-based)"


def test_disagreement_is_reported_before_a_missing_rationale():
    result = run(record([1, 0, 1], 2, rationales=[None, None, None]))
    assert result.dropped[0]["drop_reason"] == DISAGREE


def test_counts_over_a_run():
    records = [
        record([1, 0, 0], 1),
        record([1, 1, 1], -1),
        record([1, 0, 0], 0),
        record([1, 0, 0], None),
        record([1, 1, 0], 2, rationales=[rationale(0), None, rationale(2)]),
        record([1, 1, 1], 1),
    ]
    totals: dict = {}
    for rec in records:
        for key, value in run(rec).stats.items():
            totals[key] = totals.get(key, 0) + value
    assert totals == {
        "kept": 2,
        "dropped": 4,
        "dropped: no verdict": 1,
        "dropped: disagree": 2,
        "dropped: missing rationale": 1,
    }


def test_stage_shape():
    stage = FilterStage(FilterSettings())
    assert stage.name == "filter"
    assert stage.needs == ("id", "labels", "first_error", "judge_first_error", "rationales")
    assert stage.settings() == {}
    assert len(set(DROP_REASONS)) == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": []}, "`labels` must be a non-empty list"),
        ({"labels": [1, 2, 1]}, r"`labels`: step label 1 is 2"),
        ({"first_error": 2}, r"`first_error` is 2 but `labels` \[1, 0, 0\] say 1"),
        ({"first_error": None}, r"`first_error` is None"),
        ({"rationales": ["a", "b"]}, "one entry .* per step"),
        ({"rationales": ["a", 3, "c"]}, r"rationales\[1\] is int, not text"),
        ({"judge_first_error": "1"}, r"`judge_first_error` is '1', not an index"),
        ({"judge_first_error": True}, r"`judge_first_error` is True"),
    ],
)
def test_bad_records_are_refused(changes, message):
    with pytest.raises(StageError, match=message):
        run({**record([1, 0, 0], 1), **changes})
