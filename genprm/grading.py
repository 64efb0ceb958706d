"""Final answers: extract the last ``\\boxed{...}`` and decide equivalence with math-verify.

Parsing an adversarial answer can hang sympy or exhaust memory (``9^9^9...`` never finishes), so
every comparison runs as a snippet in :class:`genprm.sandbox.Sandbox` under a time limit; a
comparison that times out, runs out of memory or crashes is graded not equal, with the reason.

Bare answers are wrapped as ``$answer$`` before ``parse``. Without delimiters math-verify only
tries plain expressions, and misses LaTeX (``\\frac{\\sqrt{2}}{2}``) and implicit products
(``(x-1)(x+1)``); inside ``$...$`` "1/2", "\\frac{1}{2}" and "0.5" all parse to 1/2, "x^2-1" and
"(x-1)(x+1)" both parse, and answers that already hold ``$5$`` or ``\\boxed{5}`` still do.
math-verify's own ``signal.alarm`` time-outs are switched off: the sandbox is the one clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from dataclasses import dataclass

from genprm.sandbox import ExecResult, Sandbox

DEFAULT_TIMEOUT_S = 5.0
EQUAL, NOT_EQUAL, NO_ANSWER, NO_GOLD = "equal", "not equal", "no answer", "no gold answer"
_VERDICTS = (EQUAL, NOT_EQUAL, NO_ANSWER, NO_GOLD)
_BOXED = re.compile(r"\\boxed\s*\{")
# One snippet per pair; the answers enter only as repr() literals, never as source text.
_SNIPPET = """\
from math_verify import parse, verify
gold = parse({gold}, parsing_timeout=None)
pred = parse({pred}, parsing_timeout=None)
if not gold:
    print({no_gold!r})
elif not pred:
    print({no_answer!r})
else:
    print({equal!r} if verify(gold, pred, timeout_seconds=None) else {not_equal!r})
"""


@dataclass(frozen=True)
class Grade:
    equal: bool
    reason: str


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), or None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_boxed(r"\\boxed{1} then \\boxed{ 2 }")
    '2'
    >>> extract_boxed(r"\\boxed{\\{1, 2\\}}")
    '\\\\{1, 2\\\\}'
    >>> extract_boxed("no box") is None
    True

    A truncated last box is no answer, even when an earlier box is complete:

    >>> extract_boxed(r"\\boxed{1} then \\boxed{\\frac{2}{3}") is None
    True
    """
    opening = [match.end() for match in _BOXED.finditer(text)]
    if not opening:
        return None
    start = index = opening[-1]
    depth = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped character, \{ and \} included, does not count
            continue
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return text[start:index].strip()
        index += 1
    return None


def grade_answers(
    pairs: list[tuple[str | None, str]],
    sandbox: Sandbox | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Grade]:
    """Grade ``(predicted, gold)`` answer pairs, each within ``timeout`` seconds, in order.

    Uses ``sandbox`` when given, else :func:`shared_sandbox`. Never raises for a bad answer:
    unparseable, hanging or memory-hungry answers are graded not equal.
    """
    grades: list[Grade | None] = [_trivial(pred, gold) for pred, gold in pairs]
    pending = [index for index, grade in enumerate(grades) if grade is None]
    if pending:
        jobs = [(_snippet(*pairs[index]), ()) for index in pending]
        results = (sandbox or shared_sandbox()).run_many(jobs, timeout=timeout)
        for index, result in zip(pending, results):
            grades[index] = _grade(result, timeout)
    return grades


async def agrade_answers(
    pairs: list[tuple[str | None, str]],
    sandbox: Sandbox | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Grade]:
    """:func:`grade_answers` for asyncio code: the pairs are graded concurrently on the
    sandbox's workers (``sandbox.arun``) while the event loop goes on."""
    grades: list[Grade | None] = [_trivial(pred, gold) for pred, gold in pairs]
    pending = [index for index, grade in enumerate(grades) if grade is None]
    if pending:
        box = sandbox or await asyncio.to_thread(shared_sandbox)  # the first use starts it
        runs = [box.arun(_snippet(*pairs[index]), timeout=timeout) for index in pending]
        for index, result in zip(pending, await asyncio.gather(*runs)):
            grades[index] = _grade(result, timeout)
    return grades


def grade_answer(
    pred: str | None, gold: str, sandbox: Sandbox | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> Grade:
    """:func:`grade_answers` for one pair."""
    return grade_answers([(pred, gold)], sandbox, timeout)[0]


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """The one-worker sandbox that grading uses when given none: one per process, started on
    first use (again after a fork, or after someone closed it), closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = Sandbox(workers=1, timeout=DEFAULT_TIMEOUT_S)
        return _shared


def _forget_parents_sandbox() -> None:
    """In a forked child: the parent's workers are not ours, and the parent's lock may have
    been held by one of its other threads at the fork."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parents_sandbox)


def _trivial(pred: str | None, gold: str) -> Grade | None:
    """The grade of a pair with an empty side (``extract_boxed`` found nothing), which needs no
    sandbox.

    >>> _trivial(None, "1")
    Grade(equal=False, reason='no answer')
    """
    if not gold.strip():
        return Grade(False, NO_GOLD)
    if not (pred or "").strip():
        return Grade(False, NO_ANSWER)
    return None


def _snippet(pred: str, gold: str) -> str:
    return _SNIPPET.format(
        gold=repr(f"${gold.strip()}$"),
        pred=repr(f"${pred.strip()}$"),
        no_gold=NO_GOLD,
        no_answer=NO_ANSWER,
        equal=EQUAL,
        not_equal=NOT_EQUAL,
    )


def _grade(result: ExecResult, timeout: float) -> Grade:
    if result.status == "timeout":
        return Grade(False, f"timeout after {timeout:g} s: math-verify did not finish")
    if result.status != "ok":
        return Grade(False, f"grading error ({result.status}): {result.feedback}")
    verdict = result.stdout.strip().rpartition("\n")[2]
    if verdict not in _VERDICTS:
        return Grade(False, f"grading error: unexpected output {result.stdout[-200:]!r}")
    return Grade(verdict == EQUAL, verdict)
