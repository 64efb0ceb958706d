"""genprm.grading: real math-verify through the real sandbox, adversarial answers included."""

import json
import subprocess
import sys
import threading
import time

import pytest

from genprm.grading import Grade, extract_boxed, grade_answer, grade_answers, shared_sandbox
from tests.support.paths import REPO

TIMEOUT = 3.0
pytestmark = pytest.mark.sandbox(timeout=TIMEOUT)
# A cut-off pair comes back long before this; a pair nothing cut off never would (math-verify
# does not finish on these). Generous: the machines are shared.
CUT_OFF_WITHIN_S = 10 * TIMEOUT


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


def test_without_a_sandbox_one_shared_sandbox_serves_every_call():
    assert grade_answer("0.5", "\\frac{1}{2}") == Grade(True, "equal")
    shared = shared_sandbox()
    workers = shared.worker_pids()
    assert grade_answers([("3", "4"), ("2", "2.0")]) == [
        Grade(False, "not equal"),
        Grade(True, "equal"),
    ]
    assert shared_sandbox() is shared and shared.worker_pids() == workers
    assert grade_answers([]) == []


def test_shared_sandbox_is_made_again_after_it_was_closed():
    closed = shared_sandbox()
    closed.close()
    assert grade_answer("0.5", "\\frac{1}{2}") == Grade(True, "equal")
    fresh = shared_sandbox()
    assert fresh is not closed and not fresh.closed
    assert set(fresh.worker_pids()).isdisjoint(closed.worker_pids())


def test_threads_asking_at_once_get_one_shared_sandbox():
    shared_sandbox().close()
    got, start = [], threading.Barrier(8)

    def ask() -> None:
        start.wait()
        got.append(shared_sandbox())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and len({id(sandbox) for sandbox in got}) == 1


FORKING_GRADER = """
import json, os
from genprm.grading import grade_answer, shared_sandbox

def report():
    ok = grade_answer("2", "2.0").equal
    print(json.dumps([ok, shared_sandbox().worker_pids()]), flush=True)

report()
child = os.fork()
if child == 0:
    report()
    raise SystemExit(0)  # runs the exit handlers
os.waitpid(child, 0)
report()
"""


def test_a_forked_child_grades_with_a_shared_sandbox_of_its_own():
    done = subprocess.run(
        [sys.executable, "-c", FORKING_GRADER],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    before, child, after = (json.loads(line) for line in done.stdout.splitlines())
    assert before[0] and child[0] and after[0], done.stdout
    assert set(child[1]).isdisjoint(before[1]), "the child graded through its parent's workers"
    assert after[1] == before[1], "the child's exit cost the parent its workers"


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
    assert time.monotonic() - started < CUT_OFF_WITHIN_S
    assert not grade.equal
    assert any(word in grade.reason for word in ("timeout", "memory", "error")), grade.reason
    assert grade_answer("0.5", "\\frac{1}{2}", sandbox) == Grade(True, "equal")


def test_adversarial_pairs_do_not_hold_up_the_batch(sandbox):
    pairs = [(ADVERSARIAL["power tower"], "5"), ("10**10**10**10", "5"), ("2", "2.0"), ("3", "4")]
    started = time.monotonic()
    grades = grade_answers(pairs, sandbox, timeout=TIMEOUT)
    assert time.monotonic() - started < CUT_OFF_WITHIN_S
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
