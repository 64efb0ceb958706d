"""Scripted verifier answers: judgements whose Yes/No token carries a chosen p(Yes) (character
tokens, as ``ScriptedEngine`` counts them), and the three-step solution the verifier tests
score."""

from __future__ import annotations

import math

from genprm.format import OUTPUT_END
from genprm.testing import Scripted

PROBLEM = "Add 2 and 3, then double."
STEPS = ["2 + 3 = 5.", "5 * 2 = 10.", "The answer is 10."]
# The end of a verification turn's code part, before its judgement.
CLOSING = "The output matches.\n</verify>\n"


def verdict(p_yes: float) -> str:
    """What follows OUTPUT_PREFIX: ``{Yes}$`` (p_yes >= 0.5) or ``{No}$``, then the output's end."""
    return "{" + ("Yes" if p_yes >= 0.5 else "No") + "}$\n" + OUTPUT_END


def judged(text: str, p_yes: float, others: float = 0.9) -> Scripted:
    """``text`` whose token after ``\\boxed{`` (after the first character when it has none:
    the brace that follows OUTPUT_PREFIX) is Y or N, with p(Y) = p_yes and p(N) = 1 - p_yes in
    its top log-probabilities; every other token has probability ``others``."""
    where = text.index("\\boxed{") + len("\\boxed{") if "\\boxed{" in text else 1
    tables = [{char: math.log(others)} for char in text]
    tables[where] = {"Y": math.log(p_yes), "N": math.log(1 - p_yes)}
    assert text[where] == ("Y" if p_yes >= 0.5 else "N")
    return Scripted(text, tables)


def judgement(p_yes: float, others: float = 0.9) -> Scripted:
    """The verdict that ``p_yes`` decides, judged with it."""
    return judged(verdict(p_yes), p_yes, others)
