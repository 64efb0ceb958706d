"""genprm.grading.agrade_answers: the same grades as grade_answers, awaited, with the pairs
graded at once and the event loop free meanwhile."""

import asyncio
import time

import pytest

from genprm.grading import Grade, agrade_answers, grade_answers
from genprm.sandbox import Sandbox

TIMEOUT = 3.0
pytestmark = pytest.mark.sandbox(timeout=TIMEOUT)
PAIRS = [
    ("0.5", "\\frac{1}{2}"),
    ("(x-1)(x+1)", "x^2-1"),
    ("3", "4"),
    (None, "4"),
    ("", "4"),
    ("4", ""),
    ("a\nb", "5"),
]


def test_same_grades_as_grade_answers(sandbox):
    grades = asyncio.run(agrade_answers(PAIRS, sandbox, timeout=TIMEOUT))
    assert grades == grade_answers(PAIRS, sandbox, timeout=TIMEOUT)
    assert grades[:6] == [
        Grade(True, "equal"),
        Grade(True, "equal"),
        Grade(False, "not equal"),
        Grade(False, "no answer"),
        Grade(False, "no answer"),
        Grade(False, "no gold answer"),
    ]


def test_no_pairs_and_trivial_pairs_need_no_sandbox():
    assert asyncio.run(agrade_answers([], None)) == []
    closed = Sandbox(workers=1)
    closed.close()
    assert asyncio.run(agrade_answers([(None, "1"), ("1", " ")], closed)) == [
        Grade(False, "no answer"),
        Grade(False, "no gold answer"),
    ]


def test_a_hanging_answer_is_cut_off_while_the_loop_runs(sandbox):
    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        grades = await agrade_answers([("9" + "^9" * 30, "5"), ("2", "2.0")], sandbox, TIMEOUT)
        ticker.cancel()
        return grades, ticks

    started = time.monotonic()
    grades, ticks = asyncio.run(main())
    assert time.monotonic() - started < 10 * TIMEOUT
    assert grades == [
        Grade(False, f"timeout after {TIMEOUT:g} s: math-verify did not finish"),
        Grade(True, "equal"),
    ]
    assert ticks >= 10, "the event loop was blocked while grading"


def test_without_a_sandbox_the_shared_one_grades():
    assert asyncio.run(agrade_answers([("2", "2.0")])) == [Grade(True, "equal")]
