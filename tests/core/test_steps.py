"""genprm.steps: policy steps and free-text paragraphs, edge cases included."""

import pytest

from genprm.steps import split_paragraphs, split_policy_steps, strip_step_prefix


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        # what the policy generates after the prefix "Step 1: "
        ("x = 2.\nStep 2: y = 3.", ["Step 1: x = 2.", "Step 2: y = 3."]),
        # the same text with the prefix
        ("Step 1: x = 2.\nStep 2: y = 3.", ["Step 1: x = 2.", "Step 2: y = 3."]),
        # blank lines between steps, trailing space and newlines
        ("x = 2.  \n\n\nStep 2: y = 3.\n\n", ["Step 1: x = 2.", "Step 2: y = 3."]),
        # numbers renumbered: skipped, repeated, out of order
        (
            "a\nStep 5: b\nStep 5: c\nStep 2: d",
            ["Step 1: a", "Step 2: b", "Step 3: c", "Step 4: d"],
        ),
        # headers without a space after the colon, with a period, or with a newline
        (
            "a\nStep 2:b\nStep 3. c\nStep 4:\nd",
            ["Step 1: a", "Step 2: b", "Step 3: c", "Step 4: d"],
        ),
        # a step keeps its own lines
        ("a\nmore a\nStep 2: b\n\nmore b", ["Step 1: a\nmore a", "Step 2: b\n\nmore b"]),
        # "Step" without a number, or not at a line start, does not start a step
        ("a\nStep by step.\nSee Step 2: no", ["Step 1: a\nStep by step.\nSee Step 2: no"]),
        # empty steps are dropped and the rest renumbered
        ("\nStep 2: b\nStep 3:   \nStep 4: d", ["Step 1: b", "Step 2: d"]),
        ("", []),
        ("Step 1: ", []),
        ("one step only \\boxed{3}", ["Step 1: one step only \\boxed{3}"]),
    ],
)
def test_split_policy_steps(text, steps):
    assert split_policy_steps(text) == steps


def test_split_steps_survive_a_join_and_split_again():
    steps = ["Step 1: a", "Step 2: b\nc", "Step 3: \\boxed{4}"]
    assert split_policy_steps("\n\n".join(steps)) == steps


@pytest.mark.parametrize(
    ("step", "stripped"),
    [
        ("Step 1: a", "a"),
        ("Step 10:a", "a"),
        ("Step 3 : a", "a"),
        ("Step 2", ""),
        ("a Step 1: b", "a Step 1: b"),
        ("Steps 1: a", "Steps 1: a"),
        ("Step one: a", "Step one: a"),
        ("Step 1: Step 2: a", "Step 2: a"),
    ],
)
def test_strip_step_prefix(step, stripped):
    assert strip_step_prefix(step) == stripped


@pytest.mark.parametrize(
    ("text", "paragraphs"),
    [
        ("a\n\nb", ["a", "b"]),
        ("a\nstill a\n\n\n\nb\n", ["a\nstill a", "b"]),
        ("a\n  \t\nb", ["a", "b"]),
        ("\n\n a \n\n", ["a"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_paragraphs(text, paragraphs):
    assert split_paragraphs(text) == paragraphs
