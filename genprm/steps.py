"""Step splitting and normalisation (spec §5).

The policy writes ``"Step k: ..."`` steps (its answer starts after the assistant prefix
``"Step 1: "``); free text elsewhere (ProcessBench, Best-of-N) is split into paragraphs.

>>> split_policy_steps("Add 2 and 3: 5.\\nStep 2: Double it: \\\\boxed{10}.")
['Step 1: Add 2 and 3: 5.', 'Step 2: Double it: \\\\boxed{10}.']
"""

from __future__ import annotations

import re

# A step header at the start of a line: "Step 2:", also "Step 2." or "Step 2" (renumbered anyway).
_HEADER = re.compile(r"^Step\s+\d+\s*[:.]?[ \t]*")
# "\nStep " starts a step only before a number: "Step by step, ..." on a new line does not.
_BOUNDARY = re.compile(r"\n(?=Step \d)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def strip_step_prefix(step: str) -> str:
    """``step`` without a leading ``"Step k: "`` (or ``"Step k:"``).

    >>> strip_step_prefix("Step 12: x = 3.")
    'x = 3.'
    >>> strip_step_prefix("Step 2:x = 3.")
    'x = 3.'
    >>> strip_step_prefix("Stepping back, x = 3.")
    'Stepping back, x = 3.'
    """
    return _HEADER.sub("", step, count=1)


def split_policy_steps(text: str) -> list[str]:
    """The steps of a policy answer as ``"Step k: text"``, k renumbered 1..n, stripped.

    ``text`` is what the policy generated after ``"Step 1: "`` (or that text with the prefix);
    it is split on ``"\\nStep "`` followed by a number. Empty steps are dropped.

    >>> split_policy_steps("Step 1: a\\n\\nStep 3: b\\nStep 3:c\\n")
    ['Step 1: a', 'Step 2: b', 'Step 3: c']
    >>> split_policy_steps("a\\nStep 2:\\nStep 3: b")
    ['Step 1: a', 'Step 2: b']
    >>> split_policy_steps("Solve it.\\nStep by step: x = 1.")
    ['Step 1: Solve it.\\nStep by step: x = 1.']
    >>> split_policy_steps("  ")
    []
    """
    pieces = [strip_step_prefix(piece.strip()).strip() for piece in _BOUNDARY.split(text)]
    return [f"Step {k}: {piece}" for k, piece in enumerate(filter(None, pieces), start=1)]


def split_paragraphs(text: str) -> list[str]:
    """Free text split on blank lines, each paragraph stripped, empty ones dropped.

    >>> split_paragraphs("First.\\n\\n\\nSecond,\\nstill second.\\n \\nThird.\\n")
    ['First.', 'Second,\\nstill second.', 'Third.']
    >>> split_paragraphs("\\n\\n")
    []
    """
    return [piece.strip() for piece in _BLANK_LINES.split(text) if piece.strip()]
