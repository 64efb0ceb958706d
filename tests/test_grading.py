"""genprm.grading: real math-verify through the real sandbox, adversarial answers included."""

import time

import pytest

from genprm.grading import Grade, extract_boxed, grade_answer, grade_answers
from genprm.sandbox import Sandbox

TIMEOUT = 3.0
SLACK_S = 5.0  # a timed-out pair must come back within TIMEOUT + this


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, timeout=TIMEOUT) as sandbox:
        yield sandbox


EQUAL = [
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("\\dfrac12", "0.5"),
    ("2.0", "2"),
    ("(x-1)(x+1)", "x^2-1"),
    ("1/\\sqrt{2}", "\\sqrt{2}/2"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{5}", "5"),
    ("$5$", "5"),
]
NOT_EQUAL = [
    ("1/3", "\\frac{1}{2}"),
    ("3", "4"),
    ("x^2+1", "(x-1)(x+1)"),
    ("\\text{three}", "3"),
]


def test_equal_and_unequal_pairs(sandbox):
    grades = grade_answers(EQUAL + NOT_EQUAL, sandbox, timeout=TIMEOUT)
    assert grades[: len(EQUAL)] == [Grade(True, "equal")] * len(EQUAL)
    assert grades[len(EQUAL) :] == [Grade(False, "not equal")] * len(NOT_EQUAL)


def test_no_answer(sandbox):
    assert grade_answer("", "5", sandbox) == Grade(False, "no answer")
    assert grade_answer("  \n", "5", sandbox) == Grade(False, "no answer")
    assert grade_answer("5", "", sandbox) == Grade(False, "no gold answer")
    # math-verify finds nothing to parse in a two-line answer
    assert grade_answer("a\nb", "5", sandbox) == Grade(False, "no answer")


def test_own_sandbox_when_none_given():
    assert grade_answer("0.5", "\\frac{1}{2}") == Grade(True, "equal")
    assert grade_answers([]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("\\boxed{{a}{b{c}}}", "{a}{b{c}}"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\boxed{x \\in \\{1, 2\\}}", "x \\in \\{1, 2\\}"),
        ("\\boxed{}", ""),
        ("no box here", None),
        ("", None),
        ("\\boxed{1} and a truncated \\boxed{\\frac{1}{2}", None),
        ("\\boxed{", None),
        ("\\boxed 5", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


ADVERSARIAL = {
    "power tower": "9" + "^9" * 30,
    "nested parentheses": "(" * 25_000 + "1" + ")" * 25_000,
    "200k symbols": "x" * 200_000,
}


@pytest.mark.parametrize("answer", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_answer_is_cut_off_and_sandbox_recovers(sandbox, answer):
    started = time.monotonic()
    grade = grade_answer(answer, "5", sandbox, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + SLACK_S
    assert not grade.equal
    assert any(word in grade.reason for word in ("timeout", "memory", "error")), grade.reason
    assert grade_answer("0.5", "\\frac{1}{2}", sandbox) == Grade(True, "equal")


def test_adversarial_pairs_do_not_hold_up_the_batch(sandbox):
    pairs = [(ADVERSARIAL["power tower"], "5"), ("10**10**10**10", "5"), ("2", "2.0"), ("3", "4")]
    started = time.monotonic()
    grades = grade_answers(pairs, sandbox, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + SLACK_S
    assert grades[0] == Grade(False, f"timeout after {TIMEOUT:g} s: math-verify did not finish")
    assert grades[1:] == [
        Grade(False, "not equal"),
        Grade(True, "equal"),
        Grade(False, "not equal"),
    ]


# Were any of these pasted into the snippet as source, it would print "equal" (and exit) or fail.
INJECTIONS = [
    '"); import os; os.system("echo pwned',
    "'); print('equal'); import os; os._exit(0); ('",
    '"); print("equal"); import os; os._exit(0); ("',
    '"""\nprint("equal")\nimport os; os._exit(0)\n"""',
    "'''\nprint('equal')\nimport os; os._exit(0)\n'''",
    "\\",
    "4\\",
    "{pred}{gold}",
]


@pytest.mark.parametrize("answer", INJECTIONS)
def test_answer_text_cannot_inject_code(sandbox, answer):
    as_pred, as_gold = grade_answers([(answer, "5"), ("5", answer)], sandbox)
    assert not as_pred.equal and as_pred.reason in ("not equal", "no answer")
    assert not as_gold.equal and as_gold.reason in ("not equal", "no gold answer")


def test_quotes_and_backslashes_grade_as_ordinary_answers(sandbox):
    pairs = [
        ('\\text{"yes"}', '\\text{"yes"}'),
        ("\\text{it's}", "\\text{it's}"),
        ("\\frac{1}{2}\n", "0.5"),
    ]
    assert grade_answers(pairs, sandbox) == [Grade(True, "equal")] * 3
