"""Best-of-N arithmetic (genprm/aggregate.py, eval/bon/aggregate.py): aggregations, selection and its ties, majority
and weighted majority with their ties, pass@n, the subsets averaged over, and the metrics of
small hand-checked cases."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from eval.bon.aggregate import (
    answer_key,
    best_index,
    compute_metrics,
    n_values,
    subset_scores,
    subsets,
    vote,
)
from genprm.aggregate import AGGREGATIONS, aggregate


def sample(answer, correct, rewards):
    return {"final_answer": answer, "correct": correct, "step_rewards": rewards}


def test_aggregations_are_exact():
    rewards = [0.5, 0.25, 0.75]
    assert aggregate(rewards, "last") == 0.75
    assert aggregate(rewards, "min") == 0.25
    assert aggregate(rewards, "mean") == 0.5
    assert aggregate(rewards, "product") == 0.5 * 0.25 * 0.75
    assert [aggregate([0.3], how) for how in AGGREGATIONS] == [0.3] * 4
    assert [aggregate([], how) for how in AGGREGATIONS] == [0.0] * 4
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(rewards, "max")


def test_n_values_are_powers_of_two_and_n():
    assert n_values(1) == [1]
    assert n_values(4) == [1, 2, 4]
    assert n_values(64) == [1, 2, 4, 8, 16, 32, 64]
    assert n_values(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        n_values(0)


def test_selection_takes_the_highest_and_the_earliest_of_equals():
    assert best_index([0.1, 0.9, 0.3]) == 1
    assert best_index([0.5, 0.9, 0.9]) == 1
    assert best_index([0.0, 0.0]) == 0


def test_majority_groups_answers_without_whitespace_and_breaks_ties_by_first_sample():
    assert answer_key(" x + 1 ") == "x+1"
    assert vote(["x+1", "2", " x + 1", "2", "2"]) == 1  # "2" has 3
    assert vote(["3", "4", "4", "3"]) == 0  # tie: "3" came first
    assert vote(["4", "3", "3", "4"]) == 0
    assert vote([None, None, "7"]) == 2  # no answer never wins
    assert vote([None, None]) is None


def test_weighted_majority_sums_rewards_per_answer():
    assert vote(["3", "4", "4"], [0.9, 0.5, 0.3]) == 0  # 0.9 > 0.8
    assert vote(["3", "4", "4"], [0.7, 0.5, 0.3]) == 1  # 0.7 < 0.8
    assert vote(["3", "4"], [0.5, 0.5]) == 0  # tie -> first
    assert vote([None, "4"], [5.0, 0.1]) == 1  # no answer never wins, whatever its weight


def test_one_subset_scores_every_method():
    samples = [
        sample("4", False, [0.9, 0.9]),  # mean 0.9, min 0.9, last 0.9, product 0.81
        sample("5", True, [1.0, 0.5]),  # mean 0.75, min 0.5, last 0.5, product 0.5
        sample("4", False, [0.2]),
        sample(None, False, []),
        sample("5", True, [0.95, 0.95]),  # mean 0.95, min 0.95, last 0.95, product 0.9025
    ]
    result = subset_scores(samples, [0, 1, 2, 3])
    assert result["pass_at_n"] == 1.0
    assert result["majority"] == 0.0  # "4" twice
    assert result["best_of_n"] == dict.fromkeys(AGGREGATIONS, 0.0)  # sample 0 everywhere
    # "4": last 0.9 + 0.2 = 1.1 vs "5": 0.5; mean 1.1 vs 0.75; min 1.1 vs 0.5; product 1.01
    assert result["weighted_majority"] == dict.fromkeys(AGGREGATIONS, 0.0)
    result = subset_scores(samples, [0, 1, 4])
    assert result["majority"] == 1.0  # "5" twice
    assert result["best_of_n"] == dict.fromkeys(AGGREGATIONS, 1.0)  # sample 4
    assert result["weighted_majority"] == dict.fromkeys(AGGREGATIONS, 1.0)
    result = subset_scores(samples, [3])  # no answer, no steps
    assert result["pass_at_n"] == result["majority"] == 0.0
    assert result["best_of_n"] == result["weighted_majority"] == dict.fromkeys(AGGREGATIONS, 0.0)
    # a correct sample without an answer is picked by best-of-n but can never win a vote
    result = subset_scores([sample(None, True, [0.9]), sample("1", False, [0.1])], [0, 1])
    assert result["best_of_n"]["last"] == 1.0 and result["majority"] == 0.0
    assert result["weighted_majority"]["last"] == 0.0


def test_ties_in_selection_go_to_the_earliest_sample_of_the_subset():
    samples = [sample("1", False, [0.5]), sample("2", True, [0.5]), sample("3", True, [0.5])]
    assert subset_scores(samples, [0, 1])["best_of_n"]["last"] == 0.0
    assert subset_scores(samples, [1, 2])["best_of_n"]["last"] == 1.0


def test_subsets_are_every_combination_when_few_else_seeded_draws():
    assert subsets(4, 2, 32, random.Random(0)) == list(combinations(range(4), 2))
    assert subsets(4, 4, 1, random.Random(0)) == [(0, 1, 2, 3)]
    assert subsets(3, 8, 32, random.Random(0)) == [(0, 1, 2)]  # fewer samples than n
    first = subsets(16, 4, 32, random.Random("0:0:4"))
    assert first == subsets(16, 4, 32, random.Random("0:0:4"))  # seeded
    assert len(first) == 32
    assert all(len(set(s)) == 4 and list(s) == sorted(s) for s in first)
    assert first != subsets(16, 4, 32, random.Random("1:0:4"))


def test_metrics_of_a_hand_checked_case():
    # Problem A: 4 samples, answers 5 (right), 4, 4, 5 (right).
    a = [
        sample("5", True, [0.9]),
        sample("4", False, [0.6]),
        sample("4", False, [0.8]),
        sample("5", True, [0.3]),
    ]
    # Problem B: 4 samples, all wrong.
    b = [sample("1", False, [0.5])] * 4
    metrics = compute_metrics([a, b], 4)
    assert set(metrics) == {
        "n", "pass_at_n", "majority", "best_of_n", "weighted_majority", "single_sample",
    }  # fmt: skip
    assert metrics["n"] == [1, 2, 4]
    # n=1: the 4 single samples: 2/4 right for A, 0 for B -> 25 %.
    # n=2: 6 pairs of A: pairs with a right one: all but (1,2) -> 5/6.
    #   majority (ties to the first sample of the pair): (0,1) 5, (0,2) 5, (0,3) 5,
    #   (1,2) 4, (1,3) 4, (2,3) 4 -> 3/6.
    #   best (last): (0,1) 0.9 r, (0,2) 0.9 r, (0,3) 0.9 r, (1,2) w, (1,3) 0.6 w, (2,3) 0.8 w
    # n=4: pass 1; majority tie 2:2 -> "5" (first) r; best 0.9 r;
    #   weighted: "5" 1.2 vs "4" 1.4 -> wrong.
    assert metrics["pass_at_n"] == pytest.approx([25.0, 100 * 5 / 6 / 2, 50.0])
    assert metrics["majority"] == pytest.approx([25.0, 100 * 3 / 6 / 2, 50.0])
    for how in AGGREGATIONS:  # one step each: every aggregation is the same here
        assert metrics["best_of_n"][how] == pytest.approx([25.0, 25.0, 50.0])
    # weighted pairs: same as best when the answers differ, else the same group:
    #   (0,1) .9>.6 r, (0,2) .9>.8 r, (0,3) r, (1,2) w, (1,3) .6>.3 w, (2,3) .8>.3 w
    assert metrics["weighted_majority"]["mean"] == pytest.approx([25.0, 25.0, 0.0])
    assert metrics["single_sample"] == 25.0


def test_random_subsets_average_to_the_expectation_and_are_reproducible():
    right, wrong = sample("1", True, [0.2]), sample("2", False, [0.1])
    problems = [[right] + [wrong] * 15]
    first = compute_metrics(problems, 16, draws=32, seed=0)
    assert first == compute_metrics(problems, 16, draws=32, seed=0)
    assert first["n"] == [1, 2, 4, 8, 16]
    assert first["pass_at_n"][0] == pytest.approx(100 / 16)  # 16 combinations <= 32: exact
    assert first["pass_at_n"][-1] == 100.0  # the full set
    assert first["best_of_n"]["last"][-1] == 100.0  # 0.2 beats 0.1
    # n = 4: 1820 combinations, 32 random draws: each subset holds the right one or not.
    share = first["pass_at_n"][2] / 100 * 32
    assert share == round(share)
    assert first["best_of_n"]["last"][2] == first["pass_at_n"][2]
    other = compute_metrics(problems, 16, draws=32, seed=1)
    assert other["pass_at_n"][:1] == first["pass_at_n"][:1]


def test_metrics_refuse_empty_problems():
    with pytest.raises(ValueError):
        compute_metrics([[]], 1)
    with pytest.raises(ValueError):
        compute_metrics([[sample("1", True, [])]], 1, draws=0)
