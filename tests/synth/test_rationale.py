"""data_synthesis.rationale (spec §4) against a scripted engine whose answers depend on the
prompt and a real sandbox: the §4 constants parsed out of the spec, the exact prompts, code
executed and spliced back, the round limit and the budget, the final conclusion, the judge's
majority and tie rule, and the per-paragraph GenPRM turns."""

from __future__ import annotations

import ast
import asyncio
import re

import pytest

from data_synthesis.rationale import (
    RationaleSettings,
    RationaleStage,
    judge_vote,
    judged_first_error,
    paragraph_rationales,
)
from data_synthesis.stage import StageError
from genprm import format as fmt
from genprm.format import (
    FINAL_CONCLUSION,
    RATIONALE_PREFIX,
    CodeBlock,
    code_output_text,
    parse_turn,
    render_rationale,
)
from genprm.testing import ScriptedEngine
from genprm.testing.scripted import CharTokenizer
from tests.support.paths import SPECS

SPEC_PATH = SPECS / "genprm-format.md"
SYSTEM = (
    "You are a math teacher. Your task is to review and critique the paragraphs in solution "
    "step by step with python code."
)
PROBLEM = "Add 2 and 3, then double."
STEPS = ["Step 1: 2 + 3 = 5.", "Step 2: 5 * 2 = 11.", "Step 3: The answer is 11."]
SOLUTION_SECTION = (
    "<paragraph_1>\n2 + 3 = 5.\n</paragraph_1>\n\n"
    "<paragraph_2>\n5 * 2 = 11.\n</paragraph_2>\n\n"
    "<paragraph_3>\nThe answer is 11.\n</paragraph_3>"
)

# The model's chunks, each ending where generation stops; the third uses a name the second
# defined, so its output shows that the blocks share one namespace.
CHUNKS = {
    "5": (
        "The sum is right.\n</analyze>\n<verify>\n```python\nprint(2 + 3)\n```\n",
        "The sum is 5 as stated.\n</verify>\n\n### Paragraph 2\n<analyze>\n"
        "5 * 2 is 10, not 11.\n</analyze>\n<verify>\n"
        "```python\nproduct = 5 * 2\nprint(product)\n```\n",
    ),
    "10": (
        "The product is 10, so the paragraph is wrong.\n</verify>\n### Paragraph 3\n<analyze>\n"
        "It repeats the wrong 11.\n</analyze>\n<verify>\n```python\nprint(product == 11)\n```\n"
    ),
    "False": "11 is not the product.\n</verify>\nThe earliest error is paragraph 2.\n</think>",
}
LAST_WORDS = "\n\nSo the answer is 2."  # after </think>: cut by the stop


def spec_section_4() -> str:
    if not SPEC_PATH.is_file():
        pytest.skip(f"spec not found at {SPEC_PATH}")
    text = SPEC_PATH.read_text(encoding="utf-8")
    return text[text.index("## 4. ") : text.index("## 5. ")]


def spec_template() -> str:
    return ast.literal_eval(re.search(r"\n```\n('The following.*')\n```\n", spec_section_4())[1])


class Recording(ScriptedEngine):
    """Keeps every request (prompt ids and sampling params)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []

    def _submit(self, request):
        self.requests.append(request)
        return super()._submit(request)


def solver(judge=("{2}$",), chunks=CHUNKS):
    """Continues the rationale by the last [Code Output] of the prompt; answers the final
    conclusion with ``judge[sample index]``."""

    def answer(prompt: str, index: int) -> str:
        if prompt.endswith(FINAL_CONCLUSION):
            return judge[index % len(judge)]
        if prompt.endswith(RATIONALE_PREFIX):
            return chunks["5"][0]
        for stdout, chunk in chunks.items():
            if prompt.endswith(code_output_text(stdout)):
                return (chunk[1] if isinstance(chunk, tuple) else chunk) + LAST_WORDS
        raise AssertionError(f"unexpected prompt ending {prompt[-80:]!r}")

    return answer


def run(stage: RationaleStage, record: dict | None = None):
    record = record or {"id": "s1", "problem": PROBLEM, "steps": STEPS, "labels": [1, 0, 0]}
    return asyncio.run(stage.process(record))


def context(system: str = SYSTEM, user: str | None = None) -> str:
    """ChatML (CharTokenizer's template) with the generation prompt."""
    user = (
        user
        if user is not None
        else spec_template().format(problem=PROBLEM, solution_section=SOLUTION_SECTION)
    )
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# -- the §4 constants ------------------------------------------------------------------------


def test_rationale_constants_equal_the_spec_text():
    section = spec_section_4()
    assert fmt.RATIONALE_TEMPLATE == spec_template()
    conclusion = re.search(r"`('</verify>\\n### Final Conclusion.*?')`", section)[1]
    assert fmt.FINAL_CONCLUSION == ast.literal_eval(conclusion)
    prefix = re.search(r'Assistant prefix: `("[^`]*")`', section)[1]
    assert (
        fmt.RATIONALE_PREFIX == ast.literal_eval(prefix) == "<think>\n### Paragraph 1\n<analyze>\n"
    )
    stops = re.search(r'stops `(\["[^\]]*\])`', section)[1]
    assert list(fmt.RATIONALE_STOPS) == ast.literal_eval(stops) == ["\n```\n", "</think>"]
    assert RationaleStage(ScriptedEngine({}), None).loop.stops == fmt.RATIONALE_STOPS
    judge_stops = re.search(r"completions with stop `(\[[^\]]*\])`", section)[1]
    assert list(fmt.JUDGE_STOPS) == ast.literal_eval(judge_stops) == ["}"]
    wrapped = re.search(r"wrapped as `(<paragraph_k>[^`]*)`", section)[1]
    spec_paragraph = ast.literal_eval('"' + wrapped + '"').replace("_k>", "_{k}>")
    assert fmt.RATIONALE_PARAGRAPH == spec_paragraph == "<paragraph_{k}>\n{text}\n</paragraph_{k}>"
    assert fmt.SYSTEM_RATIONALE == SYSTEM
    # Hand-written checks of the template's shape, independent of the parsing above.
    assert fmt.RATIONALE_TEMPLATE.startswith(
        "The following is the math problem and a solution (split into paragraphs, enclosed with "
        "tags and indexed from 1):\n[Math Problem]\n\n{problem}\n\n[Solution]\n\n"
        "{solution_section}\n\nYour task is"
    )
    rendered = fmt.RATIONALE_TEMPLATE.format(problem="P", solution_section="S")
    assert rendered.endswith("in the form of `$\\boxed{INDEX}$`.")  # one real backslash
    assert "Split your verification by `### Paragraph {ID}`. \n\n" in rendered
    assert fmt.FINAL_CONCLUSION.startswith("</verify>\n### Final Conclusion\n\nAccording to")
    assert fmt.FINAL_CONCLUSION.endswith('not found")**.\n\nANSWER: \\boxed')


# -- one solution end to end -------------------------------------------------------------------


def test_a_solution_end_to_end(sandbox):
    engine = Recording(solver(judge=["{2}$", "{3}", "{ 2}", "{two}"]))
    result = run(RationaleStage(engine, sandbox))
    [record] = result.records
    start = context()
    spliced = [
        RATIONALE_PREFIX + CHUNKS["5"][0] + code_output_text("5"),
        CHUNKS["5"][1] + code_output_text("10"),
        CHUNKS["10"] + code_output_text("False"),
    ]
    kept = "".join(spliced) + "11 is not the product.\n"
    assert record["rationale_text"] == kept + FINAL_CONCLUSION
    assert record["rationale_text"].count("</verify>") == 3
    assert "</verify>\n### Final Conclusion" in record["rationale_text"]
    # Every prompt exactly: the context, then the assistant text with each output spliced in.
    assert engine.prompts == [
        start + RATIONALE_PREFIX,
        start + spliced[0],
        start + "".join(spliced[:2]),
        start + "".join(spliced),
        start + record["rationale_text"],
    ]
    assert all(isinstance(request.prompt, list) for request in engine.requests)

    loop = [request.params for request in engine.requests[:4]]
    assert all(p.stop == ("\n```\n", "</think>") and p.include_stop_str_in_output for p in loop)
    assert all(
        (p.temperature, p.top_p, p.top_k, p.n, p.seed) == (0.6, 0.95, 40, 1, None) for p in loop
    )
    assert loop[0].max_tokens == 8192 - len(RATIONALE_PREFIX)
    assert loop[1].max_tokens == 8192 - len(spliced[0])
    judge = engine.requests[4].params
    assert (judge.n, judge.stop, judge.max_tokens, judge.temperature) == (4, ("}",), 16, 0.6)

    assert record["judge_votes"] == [2, 3, 2, None]
    assert record["judge_first_error"] == 1
    assert record["code_rounds"] == 3
    generated = sum(map(len, [CHUNKS["5"][0], CHUNKS["5"][1], CHUNKS["10"], CHUNKS["False"]]))
    judged = len("{2}") + len("{3}") + len("{ 2}") + len("{two}")
    assert record["rationale_tokens"] == generated + judged
    assert {k: record[k] for k in ("id", "problem", "steps", "labels")} == {
        "id": "s1",
        "problem": PROBLEM,
        "steps": STEPS,
        "labels": [1, 0, 0],
    }
    assert result.stats == {
        "solutions": 1,
        "tokens": generated + judged,
        "code_rounds": 3,
        "judged": 1,
        "no_verdict": 0,
        "no_verify": 0,
        "unfinished": 0,
        "context_full": 0,
        "invalid_votes": 1,
        "paragraphs": 3,
        "paragraphs_unparsed": 0,
    }

    first, second, third = record["rationales"]
    assert first == (
        "<analyze>\nLet's analyze the Paragraph 1 step by step: The sum is right.\n</analyze>\n"
        "<verify>\nLet's use python code to find any potential error:\n"
        "```python\nprint(2 + 3)\n```\n[Code Output]\n\n```\n5\n```\n"
        "The sum is 5 as stated.\n</verify>\n"
    )
    assert second == render_rationale(
        2,
        "5 * 2 is 10, not 11.",
        [
            CodeBlock("product = 5 * 2\nprint(product)", "10"),
            "The product is 10, so the paragraph is wrong.\n",
        ],
        None,
    )
    turn = parse_turn(third)
    assert turn.analysis == "It repeats the wrong 11."
    assert turn.verify == [CodeBlock("print(product == 11)", "False"), "11 is not the product.\n"]
    assert turn.judgement is None
    assert parse_turn(first).code_blocks == [CodeBlock("print(2 + 3)", "5")]


# -- limits ------------------------------------------------------------------------------------


def endless(prompt: str, index: int) -> str:
    return "Once more.\n```python\nprint(6 * 7)\n```\n"  # never closes <verify> or </think>


def test_the_round_limit_stops_the_loop_and_without_verify_there_is_no_verdict(sandbox):
    engine = Recording(endless)
    result = run(RationaleStage(engine, sandbox, RationaleSettings(max_code_rounds=3)))
    [record] = result.records
    assert len(engine.requests) == 3  # three rounds, no judge request
    assert record["code_rounds"] == 3
    assert (
        record["rationale_text"] == RATIONALE_PREFIX + (endless("", 0) + code_output_text("42")) * 3
    )
    assert record["judge_votes"] == [] and record["judge_first_error"] is None
    assert record["rationales"] == [None, None, None]
    stats = result.stats
    assert (stats["no_verdict"], stats["no_verify"], stats["unfinished"], stats["judged"]) == (
        1,
        1,
        1,
        0,
    )
    assert stats["paragraphs_unparsed"] == 3


def test_sixty_four_code_rounds_by_default():
    assert RationaleSettings().max_code_rounds == 64
    assert RationaleSettings().max_tokens == 8192
    loop = RationaleStage(ScriptedEngine({}), None).loop
    assert (loop.max_rounds, loop.budget, loop.finish, loop.execute_any_chunk) == (
        64,
        8192,
        ("</think>",),
        False,
    )


def test_the_budget_counts_the_assistant_text_and_ends_the_loop(sandbox):
    engine = Recording(endless)
    settings = RationaleSettings(max_tokens=len(RATIONALE_PREFIX) + 12)
    [record] = run(RationaleStage(engine, sandbox, settings)).records
    assert [request.params.max_tokens for request in engine.requests] == [12]
    assert record["rationale_text"] == RATIONALE_PREFIX + endless("", 0)[:12]
    assert record["code_rounds"] == 0


def test_a_full_context_caps_and_then_ends_the_loop(sandbox):
    room = 30
    limit = len(context() + RATIONALE_PREFIX) + room
    engine = Recording(endless, max_model_len=limit)
    result = run(RationaleStage(engine, sandbox))
    assert [request.params.max_tokens for request in engine.requests] == [room]
    assert result.stats["context_full"] == 1 and result.stats["unfinished"] == 1


# -- the judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, vote",
    [
        ("{2", 2),
        ("{ -1", -1),
        ("{-1 ", -1),
        ("{+3", 3),
        ("4", 4),
        ("{0", 0),
        ("{2.5", None),
        ("{two", None),
        ("{\\text{2", None),
        ("{2$ and", None),
        ("", None),
    ],
)
def test_judge_vote(text, vote):
    assert judge_vote(text) == vote


@pytest.mark.parametrize(
    "votes, expected",
    [
        ([2, 2, 3, -1], 1),
        ([3, 2, 3, 2], 1),  # tie: the earliest paragraph
        ([1, -1], 0),
        ([-1, -1, 3, 3], 2),  # tie with "not found": the paragraph
        ([-1, 3, -1, 2], -1),
        ([-1, -1, -1, 2], -1),
        ([3, 3, 1, 1, -1, -1], 0),
        ([None, None, None, 3], 2),
        ([None, None, None, None], None),
        ([], None),
        ([0, 9, 2, None], 1),  # 0 and 9 are no paragraph of three
        ([-1, -1, 5, 5], -1),
        ([-2, 4, 4, 1], 0),
        ([7, 0], None),
    ],
)
def test_judge_majority_and_tie_rule(votes, expected):
    assert judged_first_error(votes, steps=3) == expected


@pytest.mark.parametrize(
    "answers, votes, first_error, invalid",
    [
        (["{-1}", "{3}", "{-1}", "{3}"], [-1, 3, -1, 3], 2, 0),
        (["{-1}", "{-1}", "{1}", "{2}"], [-1, -1, 1, 2], -1, 0),
        (["{7}", "{0}", "{-1}", "{x}"], [7, 0, -1, None], -1, 3),
        (["{x}", "{4}", "{}", "$"], [None, 4, None, None], None, 4),
    ],
)
def test_the_stage_records_votes_and_the_verdict(sandbox, answers, votes, first_error, invalid):
    result = run(RationaleStage(ScriptedEngine(solver(judge=answers)), sandbox))
    [record] = result.records
    assert record["judge_votes"] == votes
    assert record["judge_first_error"] == first_error
    assert result.stats["invalid_votes"] == invalid
    assert result.stats["judged"] == int(first_error is not None)
    assert result.stats["no_verify"] == 0


# -- per-paragraph turns -----------------------------------------------------------------------


def test_a_missing_or_unusable_section_gives_none(sandbox):
    skipped = {
        **CHUNKS,
        "5": (CHUNKS["5"][0], CHUNKS["5"][1].replace("### Paragraph 2", "### Paragraph 4")),
    }
    result = run(RationaleStage(ScriptedEngine(solver(chunks=skipped)), sandbox))
    first, second, third = result.records[0]["rationales"]
    assert second is None and first is not None and third is not None
    assert result.stats["paragraphs_unparsed"] == 1


def test_sections_read_back_by_parse_turn():
    output = code_output_text("3")
    text = (
        "<think>\n### Paragraph 1\n<analyze>\nLet's analyze the Paragraph 1 step by step: fine.\n"
        "</analyze>\n<verify>\nLet's use python code to find any potential error:\n"
        "```python\n### Paragraph 2 is next\nprint(1 + 2)\n```\n" + output + "Matches.\n"
        "```python\nprint(3)\n```\n" + output + "</verify>\n"
        "### Paragraph 2\n<analyze>\nIt says $\\boxed{Yes}$.\n</analyze>\n<verify>\nok\n</verify>\n"
        "### Paragraph 3\n<analyze>\nNever closed.\n"
        "### Paragraph 4\n<analyze>\nNo code.\n</analyze>\n<verify>\nNothing to do.\n</verify>\n"
        "### Paragraph 4\n<analyze>\nA second try.\n</analyze>\n<verify>\nIgnored.\n</verify>\n"
    )
    first, second, third, fourth, fifth = paragraph_rationales(text, 5)
    # The leads the model copied are render_rationale's own, not repeated; a heading inside
    # code is no section.
    assert first == render_rationale(
        1,
        "fine.",
        [
            CodeBlock("### Paragraph 2 is next\nprint(1 + 2)", "3"),
            "Matches.\n",
            CodeBlock("print(3)", "3"),
        ],
        None,
    )
    assert first.count("Let's analyze") == 1 and first.count("Let's use python") == 1
    assert second is None  # a boxed Yes/No would read back as a judgement
    assert third is None  # no closed <analyze>
    assert parse_turn(fourth).analysis == "No code." and "second try" not in fourth
    assert fifth is None


# -- prompts -----------------------------------------------------------------------------------


class ThinkingTokenizer(CharTokenizer):
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return super().apply_chat_template(messages, tokenize, add_generation_prompt) + "<think>\n"


def test_a_template_that_opens_the_think_block_gets_it_once(sandbox):
    engine = ScriptedEngine(solver(), tokenizer=ThinkingTokenizer())
    run(RationaleStage(engine, sandbox))
    assert engine.prompts[0] == context() + RATIONALE_PREFIX
    assert all(prompt.count("<think>") == 1 for prompt in engine.prompts)


def test_a_custom_template_bare_paragraphs_and_the_seed(sandbox):
    engine = Recording(solver())
    settings = RationaleSettings(template="Q: {problem}\n{solution_section}\n{{INDEX}}", seed=11)
    record = {"id": "s2", "problem": PROBLEM, "steps": ["It is 5.", "Step 7: Then 10."]}
    run(RationaleStage(engine, sandbox, settings), record)
    user = (
        f"Q: {PROBLEM}\n<paragraph_1>\nIt is 5.\n</paragraph_1>\n\n"
        "<paragraph_2>\nThen 10.\n</paragraph_2>\n{INDEX}"
    )
    assert engine.prompts[0] == context(user=user) + RATIONALE_PREFIX
    assert all(request.params.seed == 11 for request in engine.requests)


def test_settings_are_json_and_checked():
    stage = RationaleStage(ScriptedEngine({}), None, RationaleSettings(seed=3))
    assert stage.settings() == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 40,
        "seed": 3,
        "max_tokens": 8192,
        "max_code_rounds": 64,
        "judge_samples": 4,
        "judge_max_tokens": 16,
        "template": None,
    }
    with pytest.raises(ValueError, match="max_code_rounds"):
        RationaleSettings(max_code_rounds=0)
    with pytest.raises(ValueError, match="template"):
        RationaleSettings(template="{problem} {steps}")


@pytest.mark.parametrize(
    "record",
    [
        {"id": "b", "problem": PROBLEM, "steps": []},
        {"id": "b", "problem": PROBLEM, "steps": "Step 1: x"},
        {"id": "b", "problem": PROBLEM, "steps": ["ok", 3]},
        {"id": "b", "problem": " ", "steps": ["ok"]},
    ],
)
def test_bad_records_are_stage_errors(record):
    with pytest.raises(StageError, match="'b'"):
        run(RationaleStage(ScriptedEngine({}), None), record)
