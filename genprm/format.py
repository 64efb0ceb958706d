"""The GenPRM wire format: build, render and parse conversations.

Every string constant of ``shared/spec/genprm-format.md`` lives here and nowhere else. Released
GenPRM checkpoints only work on text that matches them character for character.

One deliberate deviation: the spec fences the executor's stdout with three backticks
(``CODE_OUTPUT``), which is ambiguous when the stdout has a line of three backticks (released
checkpoints saw exactly that). ``code_output_text`` fences such stdout, as CommonMark does, with
one backtick more than its longest backtick-only line; any other stdout gets the spec's text.

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
from typing import NamedTuple

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

# §4 rationale synthesis: upstream's user turn (a str.format template: {problem} and
# {solution_section}, the wrapped paragraphs joined by blank lines), the assistant prefix, the
# generation stops, the final-conclusion text the judge continues and the judge's stop.
RATIONALE_TEMPLATE = 'The following is the math problem and a solution (split into paragraphs, enclosed with tags and indexed from 1):\n[Math Problem]\n\n{problem}\n\n[Solution]\n\n{solution_section}\n\nYour task is to verify the correctness of paragraph in the solution.  Split your verification by `### Paragraph {{ID}}`. \n\nYour verification for each paragraph should be constructed by 2 parts, wrapped by `<analyze></analyze>` and `<verify></verify>` separately.\n\n1. in `<analyze>` part, you need to analyze the reasoning process and explain why the paragraph is correct or incorrect in detail. \n2. in `<verify>` part, you must write **Python code** in the form of ```python\n{{CODE}}\n``` to verify every details that can be verified by code. You can import PyPI (i.e., `sympy`, `scipy` and so on) to implement complicated calculation. Make sure to print the critic results in the code. Every code will be executed automatically by system. You need to analyze the `[Code Output]` after code executing.\n\n> Pay attention that you must follow the format of ```python\n{{CODE}}\n``` when you write the code, otherwise the code will not be executed.\n\nAfter all verifications, if you identify an error in a paragraph, return the **index of the paragraph where the earliest error occurs**. Otherwise, return the **index of -1 (which typically denotes "not found")**. Please put your final answer (i.e., the index) within box in the form of `$\\boxed{{INDEX}}$`.'
RATIONALE_PARAGRAPH = "<paragraph_{k}>\n{text}\n</paragraph_{k}>"
RATIONALE_PREFIX = "<think>\n### Paragraph 1\n<analyze>\n"
THINK_END = "</think>"
RATIONALE_STOPS = (CODE_CLOSE, THINK_END)
FINAL_CONCLUSION = '</verify>\n### Final Conclusion\n\nAccording to the requirement, I need to return the **index of the paragraph where the earliest error occurs**. Otherwise, return the **index of -1 (which typically denotes "not found")**.\n\nANSWER: \\boxed'
JUDGE_STOPS = ("}",)


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


_ANALYZE_OPEN = "<analyze>\n"
_ANALYZE_CLOSE = ANALYZE_END.rstrip("\n")
_ANALYZE_LEAD = re.compile(r"Let's analyze the Paragraph \d+ step by step: ")
_VERIFY_OPEN = "<verify>\n"
_VERIFY_CLOSE = VERIFY_END.rstrip("\n")
_VERIFY_LEAD = VERIFY_INTRO[len(_VERIFY_OPEN) :]
_OUTPUT_OPEN = "<output>"
_OUTPUT_CLOSE = OUTPUT_END.rstrip("\n")
# The spellings upstream's synthesis normaliser reads: any case, spaces, \text-like wrappers.
_BOXED_JUDGEMENT = re.compile(
    r"\\boxed\{\s*(?:(?P<plain>(?i:yes|no))"
    r"|\\(?:text|textbf|mathrm)\{\s*(?P<wrapped>(?i:yes|no))\s*\})\s*\}"
)
_CODE_OUTPUT_HEAD = CODE_OUTPUT[: CODE_OUTPUT.index("```")]
_EXECUTOR_OPENING = re.compile(re.escape(_CODE_OUTPUT_HEAD) + r"(`{3,})\n")

_TEXT, _CODE, _OUTPUT = "text", "code", "output"


def judgement_text(correct: bool) -> str:
    """The output section: ``<output>\\n**Judgement**: $\\boxed{Yes}$\\n</output>\\n``."""
    return OUTPUT_PREFIX + "{" + (YES if correct else NO) + "}$\n" + OUTPUT_END


def code_output_text(stdout: str) -> str:
    """The executor's [Code Output] block, fenced so that no line of ``stdout`` can close it.

    >>> code_output_text("4") == CODE_OUTPUT.format(stdout="4")
    True
    >>> code_output_text("| a |\\n```\\n| 1 |")
    '[Code Output]\\n\\n````\\n| a |\\n```\\n| 1 |\\n````\\n'
    """
    longest = max((len(line) for line in stdout.split("\n") if not line.strip("`")), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{_CODE_OUTPUT_HEAD}{fence}\n{stdout}\n{fence}\n"


def render_rationale(
    step: int, analysis: str, verify: list[str | CodeBlock], correct: bool | None
) -> str:
    """Render one assistant turn (§2) for the 1-based paragraph ``step``.

    ``verify`` alternates free text and code blocks; a block with an output gets its
    ``[Code Output]`` section. ``correct=None`` leaves the output section off (the verifier and
    the synthesis pipeline add it later). Raises FormatError for model-written text that
    ``parse_turn`` would read back differently; every stdout can be rendered.

    >>> text = render_rationale(2, "It adds.", [CodeBlock("print(1+1)", "2")], True)
    >>> text.startswith(ANALYZE_PREFIX.format(t=2) + "It adds.\\n" + ANALYZE_END + VERIFY_PREFIX)
    True
    >>> parse_turn(text).code_blocks
    [CodeBlock(code='print(1+1)', output='2')]
    """
    analysis = _with_newline(analysis)
    _check_model_text("the analysis", analysis, _ANALYZE_CLOSE, correct)
    parts = [ANALYZE_PREFIX.format(t=step), analysis, ANALYZE_END, VERIFY_INTRO]
    previous: str | CodeBlock | None = None
    for index, piece in enumerate(verify):
        if isinstance(piece, CodeBlock):
            _check_code(index, piece.code)
            parts += [CODE_OPEN, piece.code, CODE_CLOSE]
            if piece.output is not None:
                parts.append(code_output_text(piece.output))
        else:
            _check_text_piece(index, piece, previous, correct)
            parts.append(piece)
        previous = piece
    parts.append(VERIFY_END)
    if correct is not None:
        parts.append(judgement_text(correct))
    return "".join(parts)


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _check_code(index: int, code: str) -> None:
    if (code + CODE_CLOSE).find(CODE_CLOSE) < len(code):
        raise FormatError(
            f"verify piece {index}: the code has a line '```' after its first line, "
            "which would end the code block early"
        )


def _check_text_piece(
    index: int, piece: str, previous: str | CodeBlock | None, correct: bool | None
) -> None:
    where = f"verify piece {index}"
    if not piece:
        raise FormatError(f"{where} is empty text, which would read back as nothing")
    if isinstance(previous, str):
        raise FormatError(f"{where} follows another text piece; the two would read back as one")
    after_bare_code = isinstance(previous, CodeBlock) and previous.output is None
    if after_bare_code and _EXECUTOR_OPENING.match(piece):
        raise FormatError(
            f"{where} starts with a [Code Output] block, which right after a code block without "
            "output would read back as the executor's output of that block"
        )
    _check_model_text(where, piece, _VERIFY_CLOSE, correct)


def _check_model_text(where: str, text: str, closing: str, correct: bool | None) -> None:
    if CODE_OPEN in text:
        raise FormatError(f"{where} contains {CODE_OPEN!r}, which would open a code block")
    if closing in text:
        raise FormatError(f"{where} contains {closing!r}, which would end its section early")
    if correct is None and _BOXED_JUDGEMENT.search(text):
        raise FormatError(
            f"{where} contains a boxed Yes/No, which without an output section would read back "
            "as the judgement"
        )


class _Segment(NamedTuple):
    """A stretch of a turn: model text, a python code block or an executor output block.

    ``start:end`` covers the whole block, fences included; ``inner_start:inner_end`` is its
    code or stdout (for model text, the same span).
    """

    kind: str
    start: int
    end: int
    inner_start: int
    inner_end: int


def _scan(text: str, start: int = 0, end: int | None = None) -> list[_Segment]:
    """Split ``text[start:end]`` into model text, code blocks and executor output blocks.

    A code block runs from ``CODE_OPEN`` to the first ``CODE_CLOSE``. Directly after it, and only
    there, the executor writes its block: the [Code Output] header, a fence line of three or more
    backticks, the stdout, and the first line equal to that fence. A block that never closes is
    no block: the scan stops and the rest is model text. Each character is read a bounded
    number of times.
    """
    end = len(text) if end is None else end
    segments: list[_Segment] = []
    cursor = start
    while (opening := text.find(CODE_OPEN, cursor, end)) >= 0:
        code_start = opening + len(CODE_OPEN)
        code_end = text.find(CODE_CLOSE, code_start, end)
        if code_end < 0:
            break
        if opening > cursor:
            segments.append(_Segment(_TEXT, cursor, opening, cursor, opening))
        cursor = code_end + len(CODE_CLOSE)
        segments.append(_Segment(_CODE, opening, cursor, code_start, code_end))
        fence = _EXECUTOR_OPENING.match(text, cursor, end)
        if fence is None:
            continue
        closing = text.find("\n" + fence[1] + "\n", fence.end(), end)
        if closing < 0:
            break
        block_end = closing + len(fence[1]) + 2
        segments.append(_Segment(_OUTPUT, cursor, block_end, fence.end(), closing))
        cursor = block_end
    if cursor < end:
        segments.append(_Segment(_TEXT, cursor, end, cursor, end))
    return segments


def code_output_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of the executor-written [Code Output] blocks in ``text[start:end]``.

    Only a block directly after a code block's closing fence is the executor's; the same header
    written anywhere else is the model's.

    >>> code = CODE_OPEN + "print(4)" + CODE_CLOSE
    >>> block = code_output_text("4")
    >>> code_output_spans(code + block + "So 4.\\n") == [(len(code), len(code) + len(block))]
    True
    >>> code_output_spans("As shown:\\n" + block)
    []
    """
    return [(s.start, s.end) for s in _scan(text, start, end) if s.kind == _OUTPUT]


def _find_in_model_text(text: str, segments: list[_Segment], needle: str, start: int) -> int:
    """First ``needle`` at or after ``start`` lying inside one stretch of model text, or -1."""
    for segment in segments:
        if segment.kind == _TEXT and segment.end > start:
            found = text.find(needle, max(segment.start, start), segment.end)
            if found >= 0:
                return found
    return -1


class _Sections(NamedTuple):
    """Body spans of a turn's sections, each ``None`` when missing."""

    analysis: tuple[int, int] | None
    verify: tuple[int, int] | None
    output: tuple[int, int] | None


def _sections(text: str, segments: list[_Segment]) -> _Sections:
    """Find the sections in model text, each after the end of the last one found."""
    bodies = []
    cursor = 0
    for opening, closing in (
        (_ANALYZE_OPEN, _ANALYZE_CLOSE),
        (_VERIFY_OPEN, _VERIFY_CLOSE),
        (_OUTPUT_OPEN, _OUTPUT_CLOSE),
    ):
        body = None
        begin = _find_in_model_text(text, segments, opening, cursor)
        if begin >= 0:
            begin += len(opening)
            close = _find_in_model_text(text, segments, closing, begin)
            if close >= 0:
                body, cursor = (begin, close), close + len(closing)
            elif opening == _OUTPUT_OPEN:
                body = (begin, len(text))  # the verifier may stop before </output>
        bodies.append(body)
    return _Sections(*bodies)


def _judgement(text: str, segments: list[_Segment], start: int, end: int) -> bool | None:
    """The last boxed Yes/No in the model text of ``text[start:end]``."""
    found = [
        match
        for segment in segments
        if segment.kind == _TEXT
        for match in _BOXED_JUDGEMENT.finditer(
            text, max(segment.start, start), min(segment.end, end)
        )
    ]
    if not found:
        return None
    return (found[-1]["plain"] or found[-1]["wrapped"]).lower() == "yes"


def parse_turn(text: str) -> ParsedTurn:
    """Read an assistant turn back into analysis, verify pieces, code blocks and judgement.

    Tolerant of missing or unclosed sections and of arbitrary text: never raises, and runs in
    time linear in the text. Section tags and judgements count only in model-written text,
    never inside code or the executor's output. The judgement is the last boxed Yes/No of the
    ``<output>`` section or, without one, of the whole turn.

    >>> parse_turn("garbage").judgement is None
    True
    >>> parse_turn(judgement_text(True)).judgement
    True
    >>> parse_turn("Checked: $\\\\boxed{ \\\\textbf{no} }$").judgement
    False
    """
    turn = ParsedTurn()
    if not isinstance(text, str):
        return turn
    segments = _scan(text)
    sections = _sections(text, segments)
    if sections.analysis is not None:
        analysis = text[slice(*sections.analysis)]
        lead = _ANALYZE_LEAD.match(analysis)
        analysis = analysis[lead.end() :] if lead else analysis
        turn.analysis = analysis.removesuffix("\n")
    if sections.verify is not None:
        turn.verify = _verify_pieces(text, segments, *sections.verify)
        turn.code_blocks = [piece for piece in turn.verify if isinstance(piece, CodeBlock)]
    turn.judgement = _judgement(text, segments, *(sections.output or (0, len(text))))
    return turn


def _verify_pieces(
    text: str, segments: list[_Segment], start: int, end: int
) -> list[str | CodeBlock]:
    """The pieces of the verify body ``text[start:end]``, whose ends lie in model text."""
    if text.startswith(_VERIFY_LEAD, start, end):
        start += len(_VERIFY_LEAD)
    pieces: list[str | CodeBlock] = []
    for segment in segments:
        low, high = max(segment.start, start), min(segment.end, end)
        if low >= high:
            continue
        if segment.kind == _TEXT:
            pieces.append(text[low:high])
            continue
        inner = text[segment.inner_start : segment.inner_end]
        if segment.kind == _CODE:
            pieces.append(CodeBlock(inner))
        else:  # an executor block directly follows its code block
            pieces[-1] = CodeBlock(pieces[-1].code, inner)
    return pieces


def with_judgement(rationale: str, correct: bool) -> str:
    """Close a rationale with the output section implied by a label (§4).

    A rationale that already carries a judgement must agree with the label.

    >>> with_judgement("<analyze>\\nok\\n</analyze>\\n", False).endswith(judgement_text(False))
    True
    """
    segments = _scan(rationale)
    output = _sections(rationale, segments).output
    if output is None:
        return _with_newline(rationale) + judgement_text(correct)
    found = _judgement(rationale, segments, *output)
    if found is None:
        raise FormatError("rationale has an <output> section without a Yes/No judgement")
    if found != correct:
        raise FormatError(
            f"rationale judges the step {'correct' if found else 'wrong'} "
            f"but its label says {'correct' if correct else 'wrong'}"
        )
    return rationale


def first_user_content(problem: str, first_step: str) -> str:
    """The first user turn: the problem and the first step, as the evaluator that produced the
    paper's numbers sends them (the README shows ``"Question: " + problem + "\\n\\n" + step``
    instead; this is the one place to switch).

    >>> first_user_content("1+1?", "It is 2.")
    '1+1?\\nIt is 2.'
    """
    return problem + "\n" + first_step


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
        messages.append(
            {"role": "user", "content": first_user_content(problem, step) if index == 0 else step}
        )
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
