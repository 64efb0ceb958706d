"""The GenPRM wire format: build, render and parse conversations.

Every string constant of ``shared/spec/genprm-format.md`` lives here and nowhere else. Released
GenPRM checkpoints only work on text that matches them character for character.

>>> messages = build_direct_conversation("What is 1+1?", ["1+1=2.", "So 3."], first_error=1)
>>> [m["role"] for m in messages]
['system', 'user', 'assistant', 'user', 'assistant']
>>> messages[1]["content"]
'What is 1+1?\\n1+1=2.'
>>> parse_turn(messages[-1]["content"]).judgement
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# §1 system prompts.
SYSTEM_COT = "You are a math teacher. Your task is to review and critique the paragraphs in solution step by step."
SYSTEM_DIRECT = (
    "You are a math teacher. Your task is to review and critique the paragraphs in solution directly. "
    "Output your judgement in the format of `\\boxed{Yes}` if the paragraph is correct, "
    "or `\\boxed{No}` if the paragraph is incorrect."
)
# §4 rationale synthesis and §5 policy prompts.
SYSTEM_RATIONALE = SYSTEM_COT[:-1] + " with python code."
SYSTEM_POLICY = "Please reason step by step, and put your final answer within \\boxed{}."

# §2 sections of one assistant turn and the verifier's forced prefixes.
ANALYZE_PREFIX = "<analyze>\nLet's analyze the Paragraph {t} step by step: "
ANALYZE_END = "</analyze>\n"
VERIFY_INTRO = "<verify>\nLet's use python code to find any potential error:\n"
CODE_OPEN = "```python\n"
CODE_CLOSE = "\n```\n"
VERIFY_PREFIX = VERIFY_INTRO + CODE_OPEN
VERIFY_END = "</verify>\n"
OUTPUT_PREFIX = "<output>\n**Judgement**: $\\boxed"
OUTPUT_END = "</output>\n"
CODE_OUTPUT = "[Code Output]\n\n```\n{stdout}\n```\n"
YES, NO = "Yes", "No"

# §3 texts the executor shows the model in place of stdout.
CODE_ERROR = "Code execute Error: {exc_type}: {message}"
# Upstream's executor shows its TimeoutError message after the prefix.
CODE_TIMEOUT = "Code execute time out: Code execution timed out"
CODE_NOT_FOUND = "Code format error: No code found."


class FormatError(ValueError):
    """A record or turn that cannot be turned into (or read as) the GenPRM format."""


@dataclass(frozen=True)
class CodeBlock:
    """A ```python block the model wrote and, when it was executed, the executor's stdout."""

    code: str
    output: str | None = None


@dataclass
class ParsedTurn:
    """One assistant turn read back. Missing sections are ``None``; nothing here raises."""

    analysis: str | None = None
    verify: list[str | CodeBlock] | None = None
    judgement: bool | None = None
    code_blocks: list[CodeBlock] = field(default_factory=list)


def judgement_text(correct: bool) -> str:
    """The output section: ``<output>\\n**Judgement**: $\\boxed{Yes}$\\n</output>\\n``."""
    return OUTPUT_PREFIX + "{" + (YES if correct else NO) + "}$\n" + OUTPUT_END


def code_output_text(stdout: str) -> str:
    return CODE_OUTPUT.format(stdout=stdout)


def render_rationale(
    step: int, analysis: str, verify: list[str | CodeBlock], correct: bool | None
) -> str:
    """Render one assistant turn (§2) for the 1-based paragraph ``step``.

    ``verify`` alternates free text and code blocks; a block with an output gets its
    ``[Code Output]`` section. ``correct=None`` leaves the output section off (the verifier and
    the synthesis pipeline add it later).

    >>> text = render_rationale(2, "It adds.", [CodeBlock("print(1+1)", "2")], True)
    >>> text.startswith(ANALYZE_PREFIX.format(t=2) + "It adds.\\n" + ANALYZE_END + VERIFY_PREFIX)
    True
    >>> parse_turn(text).code_blocks
    [CodeBlock(code='print(1+1)', output='2')]
    """
    parts = [ANALYZE_PREFIX.format(t=step), _with_newline(analysis), ANALYZE_END, VERIFY_INTRO]
    for piece in verify:
        if isinstance(piece, CodeBlock):
            parts += [CODE_OPEN, piece.code, CODE_CLOSE]
            if piece.output is not None:
                parts.append(code_output_text(piece.output))
        else:
            parts.append(piece)
    parts.append(VERIFY_END)
    if correct is not None:
        parts.append(judgement_text(correct))
    return "".join(parts)


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


_ANALYZE_OPEN = "<analyze>\n"
_ANALYZE_LEAD = re.compile(r"Let's analyze the Paragraph \d+ step by step: ")
_VERIFY_OPEN = "<verify>\n"
_OUTPUT_OPEN = "<output>"
_BOXED_JUDGEMENT = re.compile(r"\\boxed\{\s*(yes|no)\s*\}", re.IGNORECASE)
_CODE_OUTPUT_HEAD = CODE_OUTPUT[: CODE_OUTPUT.index("{stdout}")]


def _section(text: str, opening: str, closing: str, required_close: bool = True) -> str | None:
    """The body between the first ``opening`` and the next ``closing`` (scans are linear)."""
    start = text.find(opening)
    if start < 0:
        return None
    start += len(opening)
    end = text.find(closing, start)
    if end < 0:
        return None if required_close else text[start:]
    return text[start:end]


def _code_output_end(text: str, start: int, end: int) -> int:
    """End of the [Code Output] block starting at ``start``, or -1 if none is closed by ``end``."""
    if not text.startswith(_CODE_OUTPUT_HEAD, start, end):
        return -1
    close = text.find(CODE_CLOSE, start + len(_CODE_OUTPUT_HEAD), end)
    return -1 if close < 0 else close + len(CODE_CLOSE)


def code_output_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of the executor-written [Code Output] blocks in ``text[start:end]``.

    >>> block = code_output_text("4")
    >>> code_output_spans("x\\n" + block + "y") == [(2, 2 + len(block))]
    True
    """
    end = len(text) if end is None else end
    spans, cursor = [], start
    while (found := text.find(_CODE_OUTPUT_HEAD, cursor, end)) >= 0:
        block_end = _code_output_end(text, found, end)
        if block_end < 0:
            break
        spans.append((found, block_end))
        cursor = block_end
    return spans


def parse_turn(text: str) -> ParsedTurn:
    """Read an assistant turn back into analysis, verify pieces, code blocks and judgement.

    Tolerant of missing or unclosed sections and of arbitrary text: never raises, and runs in
    time linear in the text. Without an ``<output>`` section the last boxed Yes/No anywhere
    is taken as the judgement.

    >>> parse_turn("garbage").judgement is None
    True
    >>> parse_turn(judgement_text(True)).judgement
    True
    """
    turn = ParsedTurn()
    if not isinstance(text, str):
        return turn
    analysis = _section(text, _ANALYZE_OPEN, ANALYZE_END.rstrip("\n"))
    if analysis is not None:
        lead = _ANALYZE_LEAD.match(analysis)
        analysis = analysis[lead.end() :] if lead else analysis
        turn.analysis = analysis.removesuffix("\n")
    verify = _section(text, _VERIFY_OPEN, VERIFY_END.rstrip("\n"))
    if verify is not None:
        intro = VERIFY_INTRO[len(_VERIFY_OPEN) :]
        turn.verify = _split_verify(verify.removeprefix(intro))
        turn.code_blocks = [piece for piece in turn.verify if isinstance(piece, CodeBlock)]
    output = _section(text, _OUTPUT_OPEN, OUTPUT_END.rstrip("\n"), required_close=False)
    judgements = _BOXED_JUDGEMENT.findall(text if output is None else output)
    if judgements:
        turn.judgement = judgements[-1].lower() == "yes"
    return turn


def _split_verify(body: str) -> list[str | CodeBlock]:
    pieces: list[str | CodeBlock] = []
    cursor = 0
    while (opening := body.find(CODE_OPEN, cursor)) >= 0:
        code_start = opening + len(CODE_OPEN)
        code_end = body.find(CODE_CLOSE, code_start)
        if code_end < 0:
            break
        if opening > cursor:
            pieces.append(body[cursor:opening])
        after_code = code_end + len(CODE_CLOSE)
        output_end = _code_output_end(body, after_code, len(body))
        output = None
        if output_end >= 0:
            output = body[after_code + len(_CODE_OUTPUT_HEAD) : output_end - len(CODE_CLOSE)]
        pieces.append(CodeBlock(body[code_start:code_end], output))
        cursor = after_code if output_end < 0 else output_end
    if cursor < len(body):
        pieces.append(body[cursor:])
    return pieces


def with_judgement(rationale: str, correct: bool) -> str:
    """Close a rationale with the output section implied by a label (§4).

    A rationale that already carries a judgement must agree with the label.

    >>> with_judgement("<analyze>\\nok\\n</analyze>\\n", False).endswith(judgement_text(False))
    True
    """
    output = _section(rationale, _OUTPUT_OPEN, OUTPUT_END.rstrip("\n"), required_close=False)
    if output is None:
        return _with_newline(rationale) + judgement_text(correct)
    found = parse_turn(rationale).judgement
    if found is None:
        raise FormatError("rationale has an <output> section without a Yes/No judgement")
    if found != correct:
        raise FormatError(
            f"rationale judges the step {'correct' if found else 'wrong'} "
            f"but its label says {'correct' if correct else 'wrong'}"
        )
    return rationale


def build_conversation(
    problem: str, steps: list[str], turns: list[str | bool], system: str = SYSTEM_COT
) -> list[dict[str, str]]:
    """The §1 conversation: one user turn per step, one assistant turn per step.

    ``turns`` holds a rationale (str) or a bare judgement (bool) for each of the first
    ``len(turns)`` steps; a verifier history or a direct conversation may stop early.
    """
    _check_problem_and_steps(problem, steps)
    if not turns:
        raise FormatError("no assistant turns: a conversation needs at least one")
    if len(turns) > len(steps):
        raise FormatError(f"{len(turns)} assistant turns for {len(steps)} steps")
    messages = [{"role": "system", "content": system}]
    for index, (step, turn) in enumerate(zip(steps, turns)):
        if isinstance(turn, bool):
            turn = judgement_text(turn)
        elif not isinstance(turn, str) or not turn.strip():
            raise FormatError(f"turn {index}: a rationale must be a non-empty string or a bool")
        messages.append({"role": "user", "content": problem + "\n" + step if index == 0 else step})
        messages.append({"role": "assistant", "content": turn})
    return messages


def build_direct_conversation(
    problem: str, steps: list[str], first_error: int
) -> list[dict[str, str]]:
    """A direct-mode conversation (SYSTEM_DIRECT, judgement-only turns) from a first-error label.

    Steps before ``first_error`` are judged ``Yes``, that step ``No``, and the conversation
    stops there; ``-1`` means every step is correct.
    """
    _check_problem_and_steps(problem, steps)
    if isinstance(first_error, bool) or not isinstance(first_error, int):
        raise FormatError(f"label must be an int (first wrong step or -1), got {first_error!r}")
    if not -1 <= first_error < len(steps):
        raise FormatError(f"label {first_error} is outside -1..{len(steps) - 1}")
    judged = len(steps) if first_error == -1 else first_error + 1
    turns = [index != first_error for index in range(judged)]
    return build_conversation(problem, steps, turns, system=SYSTEM_DIRECT)


def first_error_from_labels(labels: list[bool | int]) -> int:
    """Index of the first step labelled wrong (0/False), or -1.

    >>> first_error_from_labels([1, 1, 0, 1]), first_error_from_labels([True, True])
    (2, -1)
    """
    for index, label in enumerate(labels):
        if label not in (0, 1):
            raise FormatError(f"step label {index} is {label!r}; expected 0/1 or false/true")
        if not label:
            return index
    return -1


def _check_problem_and_steps(problem: str, steps: list[str]) -> None:
    if not isinstance(problem, str) or not problem.strip():
        raise FormatError("problem must be a non-empty string")
    if not isinstance(steps, list) or not steps:
        raise FormatError("steps must be a non-empty list of strings")
    for index, step in enumerate(steps):
        if not isinstance(step, str):
            raise FormatError(f"step {index} is {type(step).__name__}, not a string")
