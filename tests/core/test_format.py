"""Tests of ``genprm.format`` against the wire-format spec (``shared/spec/genprm-format.md``).

Every constant is checked twice: against a hand-written copy of the spec's literal, and against
the literal parsed out of the spec markdown itself (``ast.literal_eval``), so the tests fail when
either the spec or the implementation drifts.
"""

from __future__ import annotations

import ast
import random
import re
import time

import pytest

from genprm import format as fmt
from genprm.format import (
    CodeBlock,
    FormatError,
    ParsedTurn,
    build_conversation,
    build_direct_conversation,
    code_output_spans,
    code_output_text,
    first_error_from_labels,
    judgement_text,
    parse_turn,
    render_rationale,
    with_judgement,
)
from tests.support.paths import SPECS

SPEC_PATH = SPECS / "genprm-format.md"

YES_TURN = "<output>\n**Judgement**: $\\boxed{Yes}$\n</output>\n"
NO_TURN = "<output>\n**Judgement**: $\\boxed{No}$\n</output>\n"

# Hand-written copies of the spec's literals (§1-§5).
EXPECTED = {
    "SYSTEM_COT": "You are a math teacher. Your task is to review and critique the paragraphs in solution step by step.",
    "SYSTEM_DIRECT": (
        "You are a math teacher. Your task is to review and critique the paragraphs in solution directly. "
        "Output your judgement in the format of `\\boxed{Yes}` if the paragraph is correct, "
        "or `\\boxed{No}` if the paragraph is incorrect."
    ),
    "SYSTEM_RATIONALE": "You are a math teacher. Your task is to review and critique the paragraphs in solution step by step with python code.",
    "SYSTEM_POLICY": "Please reason step by step, and put your final answer within \\boxed{}.",
    "ANALYZE_PREFIX": "<analyze>\nLet's analyze the Paragraph {t} step by step: ",
    "VERIFY_PREFIX": "<verify>\nLet's use python code to find any potential error:\n```python\n",
    "OUTPUT_PREFIX": "<output>\n**Judgement**: $\\boxed",
    "CODE_OUTPUT": "[Code Output]\n\n```\n{stdout}\n```\n",
    "CODE_NOT_FOUND": "Code format error: No code found.",
}


# --------------------------------------------------------------------------------------------
# Spec parsing helpers
# --------------------------------------------------------------------------------------------


def _spec_text() -> str:
    if not SPEC_PATH.is_file():
        pytest.skip(f"spec not found at {SPEC_PATH}")
    return SPEC_PATH.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> list[list[str]]:
    """Lines of each top-level fenced block (a bare ``` line opens and closes; ```lang nests)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```"):
                current, depth = [], 1
            continue
        if stripped == "```":
            # A bare fence closes a nested ```lang block, else the outer block.
            depth -= 1
            if depth == 0:
                blocks.append(current)
                current = None
                continue
        elif stripped.startswith("```"):
            depth += 1
        current.append(line)
    return blocks


def _spec_assignments() -> dict[str, str]:
    """``NAME = <python literal>`` lines (possibly continued over lines) in the fenced blocks."""
    found: dict[str, str] = {}
    for block in _fenced_blocks(_spec_text()):
        for index, line in enumerate(block):
            match = re.match(r"^\s*([A-Z][A-Z_]*)\s*=\s*(.+)$", line)
            if not match:
                continue
            source = match.group(2)
            for extra in range(6):
                try:
                    value = ast.literal_eval(source.strip())
                except (SyntaxError, ValueError):
                    if index + extra + 1 >= len(block):
                        break
                    source += "\n" + block[index + extra + 1]
                    continue
                if isinstance(value, str):
                    found[match.group(1)] = value
                break
    return found


def _spec_inline_literals() -> list[str]:
    """Inline code spans of the spec that are Python string literals: `"..."`."""
    return [ast.literal_eval(span) for span in re.findall(r'`("(?:[^"\\\n]|\\.)*")`', _spec_text())]


def _spec_error_texts() -> list[str]:
    texts = []
    for block in _fenced_blocks(_spec_text()):
        for line in block:
            if line.lstrip().startswith('"Code '):
                texts.append(ast.literal_eval(line.strip()))  # trailing comments are fine
    return texts


# --------------------------------------------------------------------------------------------
# 1. Constants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_constant_matches_hand_written_spec_literal(name):
    assert getattr(fmt, name) == EXPECTED[name]


@pytest.mark.parametrize(
    "name",
    [
        "SYSTEM_COT",
        "SYSTEM_DIRECT",
        "ANALYZE_PREFIX",
        "VERIFY_PREFIX",
        "OUTPUT_PREFIX",
        "CODE_OUTPUT",
    ],
)
def test_constant_matches_literal_parsed_from_spec(name):
    parsed = _spec_assignments()
    assert name in parsed, f"{name} not found in the spec's fenced blocks"
    assert getattr(fmt, name) == parsed[name]
    assert parsed[name] == EXPECTED[name]


def test_spec_assignments_are_all_known():
    # A new constant in the spec must get a test (and an implementation).
    assert set(_spec_assignments()) == {
        "SYSTEM_COT",
        "SYSTEM_DIRECT",
        "ANALYZE_PREFIX",
        "VERIFY_PREFIX",
        "OUTPUT_PREFIX",
        "CODE_OUTPUT",
    }


def test_rationale_system_prompt_from_spec():
    literals = _spec_inline_literals()
    matches = [s for s in literals if s.startswith("You are a math teacher.")]
    assert matches == [EXPECTED["SYSTEM_RATIONALE"]]
    assert fmt.SYSTEM_RATIONALE == matches[0]
    assert fmt.SYSTEM_RATIONALE == fmt.SYSTEM_COT[:-1] + " with python code."


def test_policy_system_prompt_from_spec():
    matches = [s for s in _spec_inline_literals() if s.startswith("Please reason")]
    assert matches == [EXPECTED["SYSTEM_POLICY"]]
    assert fmt.SYSTEM_POLICY == matches[0]
    assert fmt.SYSTEM_POLICY.endswith("within \\boxed{}.")  # one real backslash
    assert fmt.SYSTEM_POLICY.count("\\") == 1


def test_direct_turn_from_spec():
    matches = [s for s in _spec_inline_literals() if s.startswith("<output>")]
    assert matches == [YES_TURN]
    assert judgement_text(True) == YES_TURN
    assert judgement_text(False) == NO_TURN


def test_judgement_completion_from_spec():
    spans = re.findall(r"`(\{(?:Yes|No)\}[^`]*)`", _spec_text())
    completions = {ast.literal_eval('"' + span + '"') for span in spans}
    assert completions == {"{Yes}$\n</output>\n", "{No}$\n</output>\n"}
    assert fmt.OUTPUT_PREFIX + "{Yes}$\n</output>\n" == judgement_text(True)
    assert fmt.OUTPUT_PREFIX + "{No}$\n</output>\n" == judgement_text(False)


def test_error_texts_from_spec():
    texts = _spec_error_texts()
    assert "Code format error: No code found." in texts
    assert "Code execute Error: {ExceptionType}: {message}" in texts
    assert fmt.CODE_NOT_FOUND == "Code format error: No code found."
    error_shape = next(t for t in texts if t.startswith("Code execute Error"))
    spec_error = error_shape.format(ExceptionType="ZeroDivisionError", message="division by zero")
    assert spec_error == "Code execute Error: ZeroDivisionError: division by zero"
    assert (
        fmt.CODE_ERROR.format(exc_type="ZeroDivisionError", message="division by zero")
        == spec_error
    )
    timeout = next(t for t in texts if t.startswith("Code execute time out"))
    assert timeout.split("...")[0] == "Code execute time out: "
    assert fmt.CODE_TIMEOUT == "Code execute time out: Code execution timed out"


def test_turn_template_of_spec_section_2_renders_identically():
    text = _spec_text()
    start = text.index("<analyze>\nLet's analyze the Paragraph {t}")
    end = text.index("</output>\n", start) + len("</output>\n")
    template = text[start:end]
    rendered = render_rationale(
        7,
        "...free text...",
        [
            CodeBlock("...code...", "...stdout of that code..."),
            "...optionally more text, more code blocks, each followed by its [Code Output]...\n",
        ],
        True,
    )
    assert rendered == template.replace("{t}", "7")


def test_prefix_helpers():
    assert (
        fmt.ANALYZE_PREFIX.format(t=3) == "<analyze>\nLet's analyze the Paragraph 3 step by step: "
    )
    assert code_output_text("2") == "[Code Output]\n\n```\n2\n```\n"
    assert code_output_text("") == "[Code Output]\n\n```\n\n```\n"
    assert fmt.VERIFY_PREFIX == fmt.VERIFY_INTRO + fmt.CODE_OPEN


@pytest.mark.parametrize(
    "stdout",
    ["", "4", "`x`", "``", "a```", "``` ", "```python", "~~~", "x\n``\ny", "[Code Output]"],
)
def test_code_output_text_is_the_spec_text_without_a_backtick_fence_line(stdout):
    # The released data's shape: every stdout without a line of 3+ backticks only.
    assert code_output_text(stdout) == fmt.CODE_OUTPUT.format(stdout=stdout)


@pytest.mark.parametrize(
    "stdout, fence",
    [
        ("```", "````"),
        ("a\n```\nb", "````"),
        ("````", "`````"),
        ("```\n`````\n```", "``````"),
        ("```\n", "````"),
        ("\n```", "````"),
    ],
)
def test_code_output_text_fence_outgrows_backtick_lines(stdout, fence):
    assert code_output_text(stdout) == f"[Code Output]\n\n{fence}\n{stdout}\n{fence}\n"


# --------------------------------------------------------------------------------------------
# 2. Conversation layout (§1)
# --------------------------------------------------------------------------------------------

PROBLEM = "Compute 2+3*4."
STEPS = ["Step 1: 3*4 = 12.", "Step 2: 2 + 12 = 14.", "Step 3: The answer is $\\boxed{14}$."]


def _rationale(t: int, correct: bool | None = True) -> str:
    return render_rationale(
        t, f"paragraph {t} is fine.", [CodeBlock(f"print({t})", str(t))], correct
    )


def test_conversation_layout():
    rationales = [_rationale(t) for t in (1, 2, 3)]
    messages = build_conversation(PROBLEM, STEPS, rationales)
    assert len(messages) == 1 + 2 * len(STEPS)
    assert messages[0] == {"role": "system", "content": fmt.SYSTEM_COT}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3
    assert messages[1]["content"] == PROBLEM + "\n" + STEPS[0]
    assert messages[3]["content"] == STEPS[1]
    assert messages[5]["content"] == STEPS[2]
    assert [m["content"] for m in messages[2::2]] == rationales
    assert all(set(m) == {"role", "content"} for m in messages)


def test_conversation_may_stop_early_and_takes_system():
    messages = build_conversation(PROBLEM, STEPS, [_rationale(1)], system="custom")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "custom"


def test_bool_turns_become_output_sections():
    messages = build_conversation(PROBLEM, STEPS, [True, False])
    assert [m["content"] for m in messages[2::2]] == [YES_TURN, NO_TURN]


def test_verifier_prompt_slice_ends_with_user_turn_t():
    messages = build_conversation(PROBLEM, STEPS, [_rationale(t) for t in (1, 2, 3)])
    for t in (1, 2, 3):
        history = messages[: 2 * t]
        assert history[0]["role"] == "system"
        assert history[-1] == {"role": "user", "content": messages[2 * t - 1]["content"]}
        assert sum(m["role"] == "user" for m in history) == t
        assert sum(m["role"] == "assistant" for m in history) == t - 1


# --------------------------------------------------------------------------------------------
# 3. build -> parse round trip
# --------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    pytest.param(
        1,
        "The paragraph computes 3*4 = 12.",
        [CodeBlock("print(3*4)", "12")],
        True,
        id="one-block",
    ),
    pytest.param(
        2,
        "Two checks.\nSecond line of analysis.",
        [
            CodeBlock("x = 2 + 12\nprint(x)", "14"),
            "The output matches. Now a second check:\n",
            CodeBlock("for i in range(3):\n    print(i)", "0\n1\n2"),
            "All good.\n",
        ],
        False,
        id="several-blocks-text-between",
    ),
    pytest.param(
        3,
        "No output here.",
        [CodeBlock("import math", None), "Continue.\n", CodeBlock("print()", "")],
        True,
        id="block-without-output-and-empty-stdout",
    ),
    pytest.param(
        4,
        "Unicode: π ≈ 3.14159, √2, 中文, émoji 🙂.",
        [CodeBlock("print('π ≈', 3.14)", "π ≈ 3.14\n"), "ünïcödé text\n"],
        False,
        id="unicode-and-trailing-newline-stdout",
    ),
    pytest.param(
        5,
        "Leading text before code.",
        ["First some words.\n", CodeBlock("", "\n"), CodeBlock("print(1)\n", "1")],
        None,
        id="text-first-empty-code-no-judgement",
    ),
    pytest.param(6, "", [], True, id="empty-analysis-no-verify-pieces"),
]


@pytest.mark.parametrize("step, analysis, verify, correct", ROUND_TRIP_CASES)
def test_round_trip(step, analysis, verify, correct):
    text = render_rationale(step, analysis, verify, correct)
    parsed = parse_turn(text)
    assert parsed.analysis == analysis
    assert parsed.verify == verify
    assert parsed.judgement is correct
    assert parsed.code_blocks == [p for p in verify if isinstance(p, CodeBlock)]
    assert render_rationale(step, parsed.analysis, parsed.verify, parsed.judgement) == text


def test_round_trip_analysis_with_trailing_newline_rerenders_identically():
    text = render_rationale(2, "ends with newline\n", [CodeBlock("print(1)", "1")], True)
    parsed = parse_turn(text)
    assert parsed.analysis == "ends with newline"
    assert render_rationale(2, parsed.analysis, parsed.verify, parsed.judgement) == text


def test_rendered_rationale_exact_text():
    text = render_rationale(2, "It adds.", [CodeBlock("print(1+1)", "2"), "Fine.\n"], False)
    assert text == (
        "<analyze>\nLet's analyze the Paragraph 2 step by step: It adds.\n</analyze>\n"
        "<verify>\nLet's use python code to find any potential error:\n"
        "```python\nprint(1+1)\n```\n"
        "[Code Output]\n\n```\n2\n```\n"
        "Fine.\n"
        "</verify>\n"
        "<output>\n**Judgement**: $\\boxed{No}$\n</output>\n"
    )


@pytest.mark.parametrize(
    "analysis, verify, correct, message",
    [
        ("ok", [CodeBlock("x = 1\n```\nprint(x)", "1")], True, "code block early"),
        ("ok", [CodeBlock("x = 1\n```", None)], True, "code block early"),
        ("a </analyze> b", [], True, "'</analyze>'"),
        ("see ```python\nx", [], True, "open a code block"),
        ("ends in ```python", [], True, "open a code block"),
        ("ok", ["try ```python\nx\n"], True, "open a code block"),
        ("ok", ["done </verify> here\n"], True, "'</verify>'"),
        ("ok", [CodeBlock("x = 1"), code_output_text("1")], True, "executor's output"),
        ("ok", ["a\n", "b\n"], True, "another text piece"),
        ("ok", [CodeBlock("x = 1", "1"), ""], True, "empty text"),
        ("it is $\\boxed{No}$", [], None, "boxed Yes/No"),
        ("ok", ["So $\\boxed{\\text{Yes}}$.\n"], None, "boxed Yes/No"),
    ],
    ids=[
        "code-fence-line",
        "code-ends-in-fence-line",
        "analysis-closing-tag",
        "analysis-code-open",
        "analysis-code-open-with-added-newline",
        "text-code-open",
        "text-verify-close",
        "text-reads-as-executor-output",
        "adjacent-texts",
        "empty-text",
        "analysis-box-without-output",
        "text-box-without-output",
    ],
)
def test_render_rationale_refuses_text_that_reads_back_differently(
    analysis, verify, correct, message
):
    with pytest.raises(FormatError, match=re.escape(message)):
        render_rationale(1, analysis, verify, correct)


@pytest.mark.parametrize(
    "analysis, verify, correct",
    [
        ("ok", [CodeBlock("```", "1")], True),  # the first line cannot close the block
        ("ok", [CodeBlock("s = '</verify>\\n<output> \\\\boxed{No}'\nprint(s)", "x")], None),
        ("ok", [CodeBlock("x = 1"), "[Code Output]\n\n``not a fence\n"], True),
        ("ok", [CodeBlock("x = 1", "1"), code_output_text("2")], True),
        ("Quotes " + code_output_text("3").rstrip("\n"), ["Also " + code_output_text("4")], True),
        ("<verify>\n<output> and \\boxed{No}", ["<analyze>\n</analyze> \\boxed{no}\n"], True),
        ("x", [CodeBlock("print('```')", "```"), "after\n"], False),
    ],
    ids=[
        "code-first-line-fence",
        "tags-and-box-in-code",
        "header-without-fence-after-bare-code",
        "header-after-executor-block",
        "model-typed-blocks",
        "tags-of-other-sections-and-boxes-with-output",
        "stdout-fence-line",
    ],
)
def test_render_rationale_accepts_and_round_trips_edge_cases(analysis, verify, correct):
    text = render_rationale(3, analysis, verify, correct)
    parsed = parse_turn(text)
    assert (parsed.analysis, parsed.verify, parsed.judgement) == (analysis, verify, correct)


_SAFE_ALPHABET = "abcxyz ABC0123456789+-*/=()[].,:;'\"!?\n\t_πé√中🙂"
# Pieces of structure that executor or model text may contain: fences, headers, tags, boxes.
_HOSTILE_TOKENS = [
    "`",
    "```",
    "````",
    "```python",
    "```python\n",
    "\n```\n",
    "\n````\n",
    "[Code Output]",
    "[Code Output]\n\n```\n",
    "[Code Output]\n\n````\n",
    "<analyze>\n",
    "</analyze>",
    "<verify>\n",
    "</verify>",
    "</verify>\n",
    "<output>",
    "</output>\n",
    "\\boxed{No}",
    "\\boxed{\\text{Yes}}",
    "$",
    "\n",
]


def _random_text(rng: random.Random, lo: int = 0, hi: int = 30, hostile: bool = False) -> str:
    def draw() -> str:
        if hostile and rng.random() < 0.25:
            return rng.choice(_HOSTILE_TOKENS)
        return rng.choice(_SAFE_ALPHABET)

    return "".join(draw() for _ in range(rng.randint(lo, hi)))


def _random_rationale(
    rng: random.Random, max_pieces: int
) -> tuple[int, str, list[str | CodeBlock], bool | None, bool]:
    """Random render_rationale arguments. Stdout is always drawn from the hostile alphabet;
    model-written text (analysis, code, free text) is hostile in about half the cases, which
    the returned flag says."""
    hostile = rng.random() < 0.5
    verify: list[str | CodeBlock] = []
    for _ in range(rng.randint(0, max_pieces)):
        if verify and not isinstance(verify[-1], CodeBlock) or rng.random() < 0.6:
            output = None if rng.random() < 0.25 else _random_text(rng, hostile=True)
            verify.append(CodeBlock(_random_text(rng, hostile=hostile), output))
        else:
            verify.append(_random_text(rng, lo=1, hostile=hostile))
    analysis = _random_text(rng, hostile=hostile).rstrip("\n")
    return rng.randint(1, 40), analysis, verify, rng.choice([True, False, None]), hostile


def _render_or_none(step, analysis, verify, correct, hostile) -> str | None:
    """The rendered turn, or None when hostile model text was refused with FormatError."""
    if not hostile:
        return render_rationale(step, analysis, verify, correct)  # any stdout renders
    try:
        return render_rationale(step, analysis, verify, correct)
    except FormatError:
        return None


def _rendered_fuzz_cases(seed: int, cases: int, max_pieces: int) -> list[tuple]:
    """``(step, analysis, verify, correct, text)`` of the random rationales that render."""
    rng = random.Random(seed)
    rendered = []
    for _ in range(cases):
        step, analysis, verify, correct, hostile = _random_rationale(rng, max_pieces)
        text = _render_or_none(step, analysis, verify, correct, hostile)
        if text is not None:
            rendered.append((step, analysis, verify, correct, text))
    return rendered


def test_round_trip_seeded_fuzz():
    cases = _rendered_fuzz_cases(seed=20250401, cases=800, max_pieces=5)
    assert len(cases) >= 500  # half the cases are safe; many hostile ones render too
    for step, analysis, verify, correct, text in cases:
        parsed = parse_turn(text)
        assert parsed.analysis == analysis, text
        assert parsed.verify == verify, text
        assert parsed.judgement is correct, text
        assert render_rationale(step, parsed.analysis, parsed.verify, parsed.judgement) == text


# --------------------------------------------------------------------------------------------
# 4. Direct conversations
# --------------------------------------------------------------------------------------------


def test_direct_all_correct():
    messages = build_direct_conversation(PROBLEM, STEPS, -1)
    assert messages[0] == {"role": "system", "content": fmt.SYSTEM_DIRECT}
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert messages[1]["content"] == PROBLEM + "\n" + STEPS[0]
    assert [m["content"] for m in messages[2::2]] == [YES_TURN] * 3
    assert [parse_turn(m["content"]).judgement for m in messages[2::2]] == [True] * 3


def test_direct_first_step_wrong():
    messages = build_direct_conversation(PROBLEM, STEPS, 0)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == PROBLEM + "\n" + STEPS[0]
    assert messages[-1]["content"] == NO_TURN


def test_direct_middle_error_stops_after_first_no():
    steps = STEPS + ["Step 4: done."]
    messages = build_direct_conversation(PROBLEM, steps, 1)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[3]["content"] == steps[1]
    assert [m["content"] for m in messages[2::2]] == [YES_TURN, NO_TURN]
    assert messages[-1]["content"] == NO_TURN


def test_direct_last_step_wrong():
    messages = build_direct_conversation(PROBLEM, STEPS, 2)
    assert [m["content"] for m in messages[2::2]] == [YES_TURN, YES_TURN, NO_TURN]


@pytest.mark.parametrize("label", [-2, 3, 10, True, False, 1.0, "1", None])
def test_direct_rejects_bad_labels(label):
    with pytest.raises(FormatError):
        build_direct_conversation(PROBLEM, STEPS, label)


def test_format_error_is_value_error():
    assert issubclass(FormatError, ValueError)


# --------------------------------------------------------------------------------------------
# 5. Malformed turns never raise
# --------------------------------------------------------------------------------------------


def _check_shape(turn: ParsedTurn) -> None:
    assert isinstance(turn, ParsedTurn)
    assert turn.analysis is None or isinstance(turn.analysis, str)
    assert turn.judgement in (None, True, False)
    if turn.verify is None:
        assert turn.code_blocks == []
    else:
        assert all(isinstance(p, (str, CodeBlock)) for p in turn.verify)
        assert turn.code_blocks == [p for p in turn.verify if isinstance(p, CodeBlock)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        b"<output>\\boxed{Yes}</output>",
        42,
        "garbage",
        "`" * 100_000,
        "<verify>\n" + "`" * 100_000 + "</verify>\n",
        bytes(range(256)).decode("latin-1"),
        "\x00\ud800\uffff",
    ],
    ids=[
        "empty",
        "none",
        "bytes",
        "int",
        "garbage",
        "backticks",
        "verify-backticks",
        "latin1",
        "odd-chars",
    ],
)
def test_parse_turn_degenerate_inputs(text):
    turn = parse_turn(text)
    _check_shape(turn)
    assert turn.analysis is None
    assert turn.judgement is None
    if not (isinstance(text, str) and text.startswith("<verify>")):
        assert turn.verify is None


def test_parse_turn_unclosed_analyze():
    turn = parse_turn("<analyze>\nLet's analyze the Paragraph 1 step by step: it is")
    _check_shape(turn)
    assert turn.analysis is None and turn.verify is None and turn.judgement is None


def test_parse_turn_unclosed_verify():
    turn = parse_turn("<analyze>\nok\n</analyze>\n<verify>\n```python\nprint(1)\n```\n")
    assert turn.analysis == "ok"
    assert turn.verify is None and turn.code_blocks == [] and turn.judgement is None


def test_parse_turn_output_without_closing_tag():
    assert parse_turn("<output>\n**Judgement**: $\\boxed{No}$").judgement is False
    assert parse_turn("<output>\n**Judgement**: $\\boxed{Yes}$\n").judgement is True
    assert parse_turn("<output>\n**Judgement**: $\\boxed").judgement is None
    assert parse_turn("<output>\n**Judgement**: $\\boxed{Ye").judgement is None


def test_parse_turn_two_judgements_last_in_output_wins():
    text = "<output>\n$\\boxed{Yes}$ no wait $\\boxed{No}$\n</output>\n"
    assert parse_turn(text).judgement is False
    text = "<output>\n$\\boxed{No}$ no wait $\\boxed{Yes}$\n</output>\n"
    assert parse_turn(text).judgement is True


def test_parse_turn_output_section_beats_other_boxes():
    analysis = "The paragraph says $\\boxed{No}$ and that is correct."
    text = render_rationale(1, analysis, [CodeBlock("print('\\\\boxed{No}')", "\\boxed{No}")], True)
    assert parse_turn(text).judgement is True
    assert parse_turn(text + "trailing $\\boxed{No}$").judgement is True


@pytest.mark.parametrize(
    "box, expected",
    [
        ("\\boxed{yes}", True),
        ("\\boxed{YES}", True),
        ("\\boxed{ No }", False),
        ("\\boxed{no}", False),
        ("\\boxed{\nYes\n}", True),
        ("\\boxed{Maybe}", None),
        ("\\boxed{Yes.}", None),
        ("boxed{Yes}", None),
        ("\\boxed{\\text{Yes}}", True),
        ("\\boxed{ \\textbf{no} }", False),
        ("\\boxed{\\mathrm{ YES }}", True),
        ("\\boxed{\n\\text{\nNo\n}\n}", False),
        ("\\boxed{\\text{Yes.}}", None),
        ("\\boxed{\\text{Yes}", None),
        ("\\boxed{\\emph{Yes}}", None),
        ("\\boxed{\\TEXT{Yes}}", None),
        ("\\boxed{\\text{Maybe}}", None),
    ],
)
def test_parse_turn_judgement_spelling(box, expected):
    assert parse_turn(f"<output>\n**Judgement**: ${box}$\n</output>\n").judgement is expected


def test_parse_turn_code_block_without_output():
    text = "<verify>\n```python\nprint(1)\n```\nno output shown\n</verify>\n"
    turn = parse_turn(text)
    assert turn.code_blocks == [CodeBlock("print(1)", None)]
    assert turn.verify == [CodeBlock("print(1)", None), "no output shown\n"]
    assert turn.analysis is None and turn.judgement is None


def test_parse_turn_missing_sections_are_none():
    assert parse_turn(judgement_text(False)) == ParsedTurn(None, None, False, [])
    turn = parse_turn("<analyze>\nonly analysis\n</analyze>\n")
    assert (turn.analysis, turn.verify, turn.judgement) == ("only analysis", None, None)


def test_executor_output_is_never_structure():
    stdout = "</verify>\n<output>\n$\\boxed{No}$\n</output>\n"
    verify = [CodeBlock("print(s)", stdout), "The check passes.\n"]
    for correct in (True, None):
        text = render_rationale(1, "Fine.", verify, correct)
        parsed = parse_turn(text)
        assert parsed.verify == verify
        assert parsed.judgement is correct
    assert with_judgement(text, True) == text + YES_TURN  # no output section yet


def test_judgement_inside_code_or_code_output_is_ignored_without_output_section():
    code = "print('$\\\\boxed{No}$')"
    text = render_rationale(1, "Fine.", [CodeBlock(code, "$\\boxed{No}$")], None)
    assert parse_turn(text).judgement is None
    text = render_rationale(1, "Fine.", [CodeBlock(code, None)], None)
    assert parse_turn(text).judgement is None
    quoted = "<analyze>\nSo $\\boxed{Yes}$.\n</analyze>\n" + text.split("</analyze>\n", 1)[1]
    assert parse_turn(quoted).judgement is True
    # The same block typed by the model (not right after a code block) is model text.
    assert parse_turn(quoted + code_output_text("\\boxed{No}")).judgement is False


def test_tags_inside_code_are_not_structure():
    text = (
        "<analyze>\nok\n</analyze>\n<verify>\n```python\nprint('</verify>')\n```\nmore\n</verify>\n"
    )
    assert parse_turn(text).verify == [CodeBlock("print('</verify>')"), "more\n"]


def test_parse_turn_sections_are_read_in_order():
    # An analysis that mentions the other sections' tags does not open them.
    text = "<analyze>\nno <verify>\nor <output> here\n</analyze>\n"
    turn = parse_turn(text)
    assert turn.analysis == "no <verify>\nor <output> here"
    assert turn.verify is None and turn.judgement is None
    assert with_judgement(text, False) == text + NO_TURN


def test_parse_turn_reads_released_three_backtick_blocks():
    # Released data fenced every stdout with three backticks.
    text = "<verify>\n```python\nprint(7)\n```\n[Code Output]\n\n```\n7\n```\nRight.\n</verify>\n"
    assert parse_turn(text).verify == [CodeBlock("print(7)", "7"), "Right.\n"]


def test_unclosed_executor_block_is_model_text():
    text = "<verify>\n```python\nx\n```\n[Code Output]\n\n````\nstill running\n</verify>\n"
    assert code_output_spans(text) == []
    assert parse_turn(text).verify == [
        CodeBlock("x"),
        "[Code Output]\n\n````\nstill running\n",
    ]
    closed = with_judgement(text, True)
    assert closed == text + YES_TURN and parse_turn(closed).judgement is True


_HOSTILE_MEGABYTE = [
    "`" * 1_000_000,
    "```python\n" * 100_000,
    "```python\n\n```\n[Code Output]\n\n````\n" * 30_000,
    "```python\nx\n```\n[Code Output]\n\n```\n" * 30_000,
    ("```python\n\n```\n[Code Output]\n\n" + "`" * 97 + "\n") * 8_000,
    "<analyze>\n<verify>\n<output>\\boxed{\\text{" * 25_000,
    "\\boxed{" + " " * 1_000_000,
    "\\boxed{\\text{" * 80_000,
]


def test_parse_turn_is_linear_on_hostile_megabytes():
    rng = random.Random(5)
    tokens = _FUZZ_TOKENS + _HOSTILE_TOKENS
    mixed = "".join(rng.choice(tokens) for _ in range(150_000))
    started = time.perf_counter()
    for text in _HOSTILE_MEGABYTE + [mixed]:
        _check_shape(parse_turn(text))
        code_output_spans(text)
    # A quadratic scan takes hours here; linear takes well under a second per text.
    assert time.perf_counter() - started < 30


_FUZZ_TOKENS = [
    "<analyze>\n",
    "</analyze>\n",
    "</analyze>",
    "<verify>\n",
    "</verify>\n",
    "<output>\n",
    "</output>\n",
    "```python\n",
    "\n```\n",
    "```",
    "[Code Output]\n\n```\n",
    "[Code Output]\n\n````\n",
    "\n````\n",
    "\\boxed{Yes}",
    "\\boxed{\\text{Yes}}",
    "\\boxed{No}",
    "\\boxed{",
    "$",
    "}",
    "Let's analyze the Paragraph 3 step by step: ",
    "Let's use python code to find any potential error:\n",
    "\n",
    "text",
    "π🙂",
    "\x00",
    "\ud800",
]


def test_parse_turn_seeded_fuzz_never_raises():
    rng = random.Random(1234)
    for _ in range(2000):
        parts = []
        for _ in range(rng.randint(0, 25)):
            if rng.random() < 0.7:
                parts.append(rng.choice(_FUZZ_TOKENS))
            else:
                parts.append("".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(1, 8))))
        _check_shape(parse_turn("".join(parts)))


# --------------------------------------------------------------------------------------------
# 6. with_judgement
# --------------------------------------------------------------------------------------------


def test_with_judgement_appends_when_missing():
    rationale = render_rationale(1, "ok", [CodeBlock("print(1)", "1")], None)
    assert rationale.endswith("</verify>\n")
    assert with_judgement(rationale, True) == rationale + YES_TURN
    assert with_judgement(rationale, False) == rationale + NO_TURN


def test_with_judgement_adds_newline_before_output():
    rationale = "<analyze>\nok\n</analyze>\n<verify>\nfine\n</verify>"
    assert with_judgement(rationale, False) == rationale + "\n" + NO_TURN


def test_with_judgement_keeps_agreeing_judgement():
    rationale = render_rationale(1, "ok", [CodeBlock("print(1)", "1")], True)
    assert with_judgement(rationale, True) == rationale
    rationale = render_rationale(1, "bad", [], False)
    assert with_judgement(rationale, False) == rationale


def test_with_judgement_rejects_disagreement():
    with pytest.raises(FormatError):
        with_judgement(render_rationale(1, "ok", [], True), False)
    with pytest.raises(FormatError):
        with_judgement(render_rationale(1, "bad", [], False), True)


def test_with_judgement_appends_when_only_the_analysis_quotes_a_box():
    # A yes/no problem: the analysis quotes the paragraph's own boxed answer, but the rationale
    # has no <output> section yet (§4: each section is closed with the label's judgement).
    rationale = (
        "<analyze>\nLet's analyze the Paragraph 2 step by step: The paragraph concludes "
        "$\\boxed{No}$ (91 = 7*13 is not prime), which is right.\n</analyze>\n"
    )
    assert with_judgement(rationale, True) == rationale + YES_TURN
    assert with_judgement(rationale, False) == rationale + NO_TURN


# --------------------------------------------------------------------------------------------
# 7. Labels and bad build inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([1, 1, 0, 1], 2),
        ([True, True], -1),
        ([], -1),
        ([0], 0),
        ([False, 0], 0),
        ([1, True, 1, False], 3),
    ],
)
def test_first_error_from_labels(labels, expected):
    assert first_error_from_labels(labels) == expected


@pytest.mark.parametrize("labels", [[1, 2], [1, None], ["1"], [0.5], [-1], [1, "0"]])
def test_first_error_from_labels_rejects_non_binary(labels):
    with pytest.raises(FormatError):
        first_error_from_labels(labels)


@pytest.mark.parametrize(
    "problem, steps, turns",
    [
        pytest.param(PROBLEM, [], [True], id="empty-steps"),
        pytest.param(PROBLEM, "Step 1", [True], id="steps-not-list"),
        pytest.param(PROBLEM, ["ok", 3], [True], id="non-string-step"),
        pytest.param(PROBLEM, ["ok", None], [True], id="none-step"),
        pytest.param("", STEPS, [True], id="empty-problem"),
        pytest.param("  \n", STEPS, [True], id="blank-problem"),
        pytest.param(None, STEPS, [True], id="none-problem"),
        pytest.param(PROBLEM, STEPS, [], id="no-turns"),
        pytest.param(PROBLEM, STEPS, [True] * 4, id="more-turns-than-steps"),
        pytest.param(PROBLEM, STEPS, [""], id="empty-rationale"),
        pytest.param(PROBLEM, STEPS, [True, " \n\t"], id="blank-rationale"),
        pytest.param(PROBLEM, STEPS, [None], id="none-turn"),
        pytest.param(PROBLEM, STEPS, [1], id="int-turn"),
    ],
)
def test_build_conversation_rejects_bad_input(problem, steps, turns):
    with pytest.raises(FormatError):
        build_conversation(problem, steps, turns)


@pytest.mark.parametrize(
    "problem, steps",
    [("", STEPS), (PROBLEM, []), (PROBLEM, ["ok", 1])],
)
def test_build_direct_conversation_rejects_bad_input(problem, steps):
    with pytest.raises(FormatError):
        build_direct_conversation(problem, steps, -1)


# --------------------------------------------------------------------------------------------
# 8. code_output_spans
# --------------------------------------------------------------------------------------------


def _executor_spans(verify: list[str | CodeBlock], text: str) -> list[tuple[int, int]]:
    """Where render_rationale put each code_output_text, found by rebuilding the text."""
    spans = []
    cursor = text.index(fmt.VERIFY_INTRO) + len(fmt.VERIFY_INTRO)
    for piece in verify:
        if isinstance(piece, CodeBlock):
            cursor += len(fmt.CODE_OPEN + piece.code + fmt.CODE_CLOSE)
            if piece.output is not None:
                out = code_output_text(piece.output)
                assert text[cursor : cursor + len(out)] == out
                spans.append((cursor, cursor + len(out)))
                cursor += len(out)
        else:
            cursor += len(piece)
    return spans


@pytest.mark.parametrize("step, analysis, verify, correct", ROUND_TRIP_CASES)
def test_code_output_spans_finds_executor_blocks(step, analysis, verify, correct):
    text = render_rationale(step, analysis, verify, correct)
    spans = code_output_spans(text)
    assert spans == _executor_spans(verify, text)
    outputs = [p.output for p in verify if isinstance(p, CodeBlock) and p.output is not None]
    assert [text[a:b] for a, b in spans] == [code_output_text(o) for o in outputs]


def test_code_output_spans_ignores_model_text_mentions():
    verify = [
        CodeBlock("print('[Code Output]')", "[Code Output]"),
        "As the [Code Output] above shows, fine.\n",
        CodeBlock("x = 1", None),
        CodeBlock("print(x)\nprint(x + 1)", "1\n2"),
    ]
    text = render_rationale(1, "Mentions [Code Output] in analysis.", verify, True)
    spans = code_output_spans(text)
    assert [text[a:b] for a, b in spans] == [
        code_output_text("[Code Output]"),
        code_output_text("1\n2"),
    ]
    assert spans == _executor_spans(verify, text)


def test_code_output_spans_seeded_fuzz():
    cases = _rendered_fuzz_cases(seed=77, cases=600, max_pieces=6)
    assert len(cases) >= 350
    for _, _, verify, _, text in cases:
        spans = code_output_spans(text)
        assert spans == _executor_spans(verify, text), text
        outputs = [p.output for p in verify if isinstance(p, CodeBlock) and p.output is not None]
        assert [text[a:b] for a, b in spans] == [code_output_text(o) for o in outputs]


def test_markdown_table_stdout_round_trips_and_is_fully_masked():
    # The motivating case: code that prints a markdown table between ``` lines.
    stdout = "```\n| n | n^2 |\n|---|-----|\n| 3 | 9 |\n```"
    verify = [CodeBlock("print(table)", stdout), "The table matches.\n"]
    text = render_rationale(1, "Squares.", verify, True)
    assert parse_turn(text).verify == verify
    spans = code_output_spans(text)
    assert [text[a:b] for a, b in spans] == [code_output_text(stdout)]
    assert spans == _executor_spans(verify, text)
    assert text[spans[0][1] :].startswith("The table matches.\n")


def test_model_typed_code_output_after_free_text_is_not_an_executor_span():
    block = code_output_text("42")
    verify = [CodeBlock("print(6 * 7)", "42"), "Expected:\n" + block, CodeBlock("pass"), "ok\n"]
    text = render_rationale(1, "Quoting " + block, verify, True)
    assert parse_turn(text).verify == verify
    assert code_output_spans(text) == _executor_spans(verify, text)
    assert len(code_output_spans(text)) == 1
    # Right after an executor block the same header is the model's too.
    verify = [CodeBlock("print(1)", "1"), block]
    text = render_rationale(1, "ok", verify, True)
    assert code_output_spans(text) == _executor_spans(verify, text)
    assert parse_turn(text).verify == verify


def test_code_output_spans_within_a_range():
    turn = render_rationale(1, "ok", [CodeBlock("print(1)", "```")], True)
    text = "<user>" + turn + "<user>"
    (span,) = code_output_spans(text, 6, 6 + len(turn))
    assert text[slice(*span)] == code_output_text("```")
    assert code_output_spans(text, 6, span[1] - 1) == []  # cut before its closing fence
