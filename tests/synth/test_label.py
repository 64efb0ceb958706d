"""The label stage (spec §5): exact relative-progress, hard and difference labels, MC_{t-1} = 0,
the 0.8 boundary computed on fractions rather than floats, first errors, bad records."""

import asyncio

import pytest

from data_synthesis.label import (
    LabelSettings,
    LabelStage,
    diff_labels,
    first_error,
    hard_labels,
    rpe_labels,
)
from data_synthesis.stage import StageError


def record(mc, mc_initial=0.5, **extra):
    return {
        "id": "s-1",
        "problem": "What is 6 * 7?",
        "steps": [f"Step {i + 1}: ..." for i in range(len(mc))],
        "answer": "42",
        "problem_id": "p-1",
        "correct": False,
        "mc": mc,
        "mc_initial": mc_initial,
        "rollouts": [64] * len(mc),
        "k": 64,
        **extra,
    }


def run(settings: LabelSettings, rec: dict):
    return asyncio.run(LabelStage(settings).process(rec))


def test_float_trap_the_ratio_is_exactly_epsilon():
    assert (4 / 50) / (5 / 50) < 0.8  # what floats say: 0.7999999999999999
    assert rpe_labels([4 / 50], mc_initial=5 / 50, epsilon=0.8) == [1]
    assert rpe_labels([0.36], mc_initial=0.45, epsilon=0.8) == [1]
    assert rpe_labels([0.35], mc_initial=0.45, epsilon=0.8) == [0]


@pytest.mark.parametrize(
    ("previous", "score", "label"),
    [
        ((15, 50), (12, 50), 1),  # exactly 0.8
        ((5, 50), (4, 50), 1),  # exactly 0.8; floats say 0.7999999999999999
        ((45, 100), (36, 100), 1),  # exactly 0.8; floats say 0.7999999999999999
        ((45, 100), (35, 100), 0),  # 0.777..., just below
        ((15, 50), (11, 50), 0),  # 0.733...
        ((5, 64), (4, 64), 1),  # exactly 0.8
        ((10, 128), (8, 128), 1),  # exactly 0.8
        ((101, 128), (80, 128), 0),  # 0.792..., just below
        ((50, 64), (40, 64), 1),  # exactly 0.8
        ((51, 64), (40, 64), 0),  # 0.784..., just below
        ((125, 128), (100, 128), 1),  # exactly 0.8
        ((126, 128), (100, 128), 0),  # 0.7936..., just below
        ((30, 32), (24, 32), 1),  # exactly 0.8
        ((20, 32), (32, 32), 1),  # progress above 1
    ],
)
def test_rpe_at_the_boundary(previous, score, label):
    before, after = previous[0] / previous[1], score[0] / score[1]
    assert rpe_labels([after], mc_initial=before, epsilon=0.8) == [label]
    # and as the second step, after a first step with the same score as the start
    assert rpe_labels([before, after], mc_initial=before, epsilon=0.8) == [1, label]


def test_exact_boundaries_that_floats_get_wrong():
    """Every k/K pair with ratio exactly 0.8 where float division lands below 0.8."""
    trapped = [
        (k_prev, k, big_k)
        for big_k in (32, 50, 64, 100, 128)
        for k_prev in range(5, big_k + 1, 5)
        for k in [k_prev * 4 // 5]
        if (k / big_k) / (k_prev / big_k) < 0.8
    ]
    assert trapped, "the float trap exists for realistic K"
    for k_prev, k, big_k in trapped:
        assert rpe_labels([k / big_k], k_prev / big_k, 0.8) == [1], (k_prev, k, big_k)
        assert rpe_labels([(k - 1) / big_k], k_prev / big_k, 0.8) == [0], (k_prev, k, big_k)


def test_rpe_uses_mc_initial_as_the_score_before_the_first_step():
    assert rpe_labels([0.5, 0.5], mc_initial=1.0, epsilon=0.8) == [0, 1]
    assert rpe_labels([0.5, 0.5], mc_initial=0.5, epsilon=0.8) == [1, 1]
    assert rpe_labels([0.5], mc_initial=0.625, epsilon=0.8) == [1]  # 0.8 exactly


def test_rpe_after_a_zero_score():
    # MC_{t-1} = 0: correct iff MC_t > 0
    assert rpe_labels([0.0, 1 / 64, 0.0, 0.0], mc_initial=0.0, epsilon=0.8) == [0, 1, 0, 0]
    assert rpe_labels([0.25, 0.0, 0.0], mc_initial=0.5, epsilon=0.8) == [0, 0, 0]


def test_rpe_other_epsilon():
    assert rpe_labels([0.5, 0.25, 0.125], mc_initial=1.0, epsilon=0.5) == [1, 1, 1]
    assert rpe_labels([0.5, 0.2], mc_initial=1.0, epsilon=0.5) == [1, 0]
    # 0.7 as written, not the float below it: 7/10 of 10/10 meets it
    assert rpe_labels([0.7], mc_initial=1.0, epsilon=0.7) == [1]


def test_hard_labels():
    assert hard_labels([1.0, 1 / 128, 0.0, 0.5]) == [1, 1, 0, 1]
    assert hard_labels([0.0]) == [0]


def test_diff_labels_exact():
    # 0.3 - 0.1 is 0.19999999999999998 in floats
    assert diff_labels([0.3], mc_initial=0.1, threshold=0.2) == [1]
    assert diff_labels([0.29], mc_initial=0.1, threshold=0.2) == [0]
    assert diff_labels([0.5, 0.25, 0.25, 1.0], mc_initial=0.5, threshold=0.0) == [1, 0, 1, 1]
    assert diff_labels([0.4], mc_initial=0.5, threshold=-0.1) == [1]
    # from MC 0 the change is >= 0
    assert diff_labels([0.0, 0.0], mc_initial=0.0, threshold=0.0) == [1, 1]


def test_first_error():
    assert first_error([1, 1, 0, 1, 0]) == 2
    assert first_error([0]) == 0
    assert first_error([1, 1]) == -1


def test_stage_adds_labels_and_keeps_the_record():
    rec = record([0.5, 0.4, 0.125, 0.0], mc_initial=0.5)
    result = run(LabelSettings(), rec)
    [out] = result.records
    assert out == {**rec, "labels": [1, 1, 0, 0], "first_error": 2, "label_method": "rpe"}
    assert result.stats == {
        "solutions": 1,
        "steps": 4,
        "labels_positive": 2,
        "labels_negative": 2,
        "first_error_none": 0,
    }
    assert result.dropped == []


def test_stage_all_correct():
    result = run(LabelSettings(), record([0.5, 0.5, 1.0], mc_initial=0.5))
    assert result.records[0]["first_error"] == -1
    assert result.stats["first_error_none"] == 1 and result.stats["labels_negative"] == 0


@pytest.mark.parametrize(
    ("settings", "labels", "written"),
    [
        (LabelSettings(method="hard"), [1, 1, 1, 0], {"method": "hard"}),
        (
            LabelSettings(method="diff", threshold=0.0),
            [1, 0, 1, 0],
            {"method": "diff", "threshold": 0.0},
        ),
        (LabelSettings(epsilon=0.5), [1, 1, 1, 0], {"method": "rpe", "epsilon": 0.5}),
        (LabelSettings(), [1, 0, 1, 0], {"method": "rpe", "epsilon": 0.8}),
        (
            LabelSettings(method="diff", threshold=-0.125),
            [1, 1, 1, 0],
            {"method": "diff", "threshold": -0.125},
        ),
    ],
)
def test_stage_methods(settings, labels, written):
    stage = LabelStage(settings)
    out = asyncio.run(stage.process(record([0.5, 0.375, 0.375, 0.0], mc_initial=0.5)))
    assert out.records[0]["labels"] == labels
    assert out.records[0]["label_method"] == settings.method
    assert stage.settings() == written
    assert stage.name == "label" and stage.needs == ("id", "steps", "mc", "mc_initial")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mc": [0.5, 0.5]}, r"one score per step: 2 scores for 3 steps"),
        ({"mc": 0.5}, r"one score per step: a float for 3 steps"),
        ({"mc": [0.5, 1.5, 0.0]}, r"mc\[1\] is 1.5, outside \[0, 1\]"),
        ({"mc": [0.5, -0.1, 0.0]}, r"mc\[1\] is -0.1, outside"),
        ({"mc": [0.5, None, 0.0]}, r"mc\[1\] is None, not a number"),
        ({"mc": [0.5, True, 0.0]}, r"mc\[1\] is True, not a number"),
        ({"mc_initial": 2}, r"mc_initial is 2, outside"),
        ({"mc_initial": None}, r"mc_initial is None"),
        ({"steps": []}, r"`steps` must be a non-empty list"),
    ],
)
def test_bad_records_are_refused(changes, message):
    rec = {**record([0.5, 0.5, 0.0]), **changes}
    with pytest.raises(StageError, match=message):
        run(LabelSettings(), rec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "soft"}, "not one of rpe, hard, diff"),
        ({"epsilon": 0}, "epsilon must be above 0"),
        ({"epsilon": float("nan")}, "epsilon must be finite"),
        ({"threshold": "0.1"}, "threshold must be a number"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelSettings(**kwargs)
