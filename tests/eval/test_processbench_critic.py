"""The critic LLM protocol: the official prompt, the boxed index, greedy and majority verdicts."""

import asyncio
import re

import pytest

from eval.processbench.critic import (
    CRITIC_TEMPLATE,
    CriticVerdict,
    critic_prompt,
    critic_verdict,
    parse_index,
)
from genprm.testing import ScriptedEngine
from tests.support.paths import SPECS

SPEC = SPECS / "processbench.md"
PROBLEM = "What is $2 + 3 \\times 4$?"
STEPS = ["First, $3 \\times 4 = 12$.", "Then $2 + 12 = 14$, so the answer is $\\boxed{14}$."]


class RecordingEngine(ScriptedEngine):
    """A scripted engine that keeps every request it is sent."""

    def __init__(self, script):
        super().__init__(script)
        self.requests = []

    def _submit(self, request):
        self.requests.append(request)
        return super()._submit(request)


def verdict(texts, samples, steps=STEPS, max_tokens=4096):
    engine = RecordingEngine(lambda prompt, index: texts[index])
    result = asyncio.run(critic_verdict(engine, PROBLEM, steps, samples, max_tokens))
    return result, engine


def test_template_is_the_spec_template():
    (block,) = re.findall(r"^```\n(.*?)\n```$", SPEC.read_text(), re.DOTALL | re.MULTILINE)
    assert CRITIC_TEMPLATE == block


def test_the_prompt_is_the_official_text_in_one_user_turn():
    _, engine = verdict([r"\boxed{-1}"], samples=1)
    assert engine.prompts == [
        "<|im_start|>user\n"
        "The following is a math problem and a solution (split into paragraphs, enclosed with "
        "tags and indexed from 0):\n"
        "\n"
        "[Math Problem]\n"
        "\n"
        "What is $2 + 3 \\times 4$?\n"
        "\n"
        "[Solution]\n"
        "\n"
        "<paragraph_0>\n"
        "First, $3 \\times 4 = 12$.\n"
        "</paragraph_0>\n"
        "\n"
        "<paragraph_1>\n"
        "Then $2 + 12 = 14$, so the answer is $\\boxed{14}$.\n"
        "</paragraph_1>\n"
        "\n"
        "Your task is to review and critique the solution paragraph by paragraph. Once you "
        "identify an error in a paragraph, return the index of the paragraph where the earliest "
        'error occurs. Otherwise, return the index of -1 (which typically denotes "not found").\n'
        "\n"
        "Please put your final answer (i.e., the index) in \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ]


def test_braces_in_the_problem_and_steps_pass_through():
    prompt = critic_prompt("Find {x}.", ["Let {y} = {}."])
    assert "\n\nFind {x}.\n\n" in prompt
    assert "<paragraph_0>\nLet {y} = {}.\n</paragraph_0>" in prompt


@pytest.mark.parametrize(
    "text, index",
    [
        (r"\boxed{3}", 3),
        (r"First \boxed{0}, on reflection \boxed{2}.", 2),
        (r"\boxed{-1}", -1),
        (r"\boxed{ 2 }", 2),
        (r"\boxed {1}", 1),
        (r"\boxed{+4}", 4),
        (r"\boxed{\text{-1}}", None),
        (r"\boxed{{3}}", None),
        (r"\boxed{\frac{1}{2}} then \boxed{5}", 5),
        (r"\boxed{5} then \boxed{\frac{1}{2}}", None),
        (r"\boxed{3} then \boxed{4", None),
        (r"\boxed{2.}", None),
        (r"\boxed{paragraph 2}", None),
        (r"\boxed{}", None),
        (r"\boxed{٣}", None),
        ("the earliest error is in paragraph 2", None),
        ("", None),
    ],
)
def test_parse_index(text, index):
    assert parse_index(text) == index


def test_greedy_verdict_sends_one_greedy_sample():
    result, engine = verdict([r"Paragraph 1 is wrong. \boxed{1}"], samples=1, max_tokens=512)
    assert result == CriticVerdict(1, [r"Paragraph 1 is wrong. \boxed{1}"], {1: 1})
    (request,) = engine.requests
    assert (request.params.n, request.params.temperature, request.params.max_tokens) == (1, 0, 512)


def test_majority_sends_one_request_with_the_protocol_sampling():
    texts = [r"\boxed{0}"] * 8
    result, engine = verdict(texts, samples=8)
    (request,) = engine.requests
    params = request.params
    assert (params.n, params.temperature, params.top_p, params.max_tokens) == (8, 1.0, 0.9, 4096)
    assert result == CriticVerdict(0, texts, {0: 8})


def test_majority_tie_goes_to_the_index_seen_first():
    texts = [r"\boxed{1}", r"\boxed{-1}", r"\boxed{-1}", r"\boxed{1}"] * 2
    result, _ = verdict(texts, samples=8)
    assert result.votes == {1: 4, -1: 4}
    assert result.prediction == 1


def test_unparsable_and_out_of_range_samples_do_not_vote():
    texts = [r"\boxed{2}", r"\boxed{2}", r"\boxed{-2}", "no answer", r"\boxed{x}"]
    texts += [r"\boxed{0}", r"\boxed{2}", r"\boxed{0}"]
    result, _ = verdict(texts, samples=8)
    assert result.votes == {0: 2}
    assert result.prediction == 0
    assert result.samples == texts


def test_no_valid_sample_predicts_nothing():
    assert verdict([r"\boxed{5}"], samples=1)[0] == CriticVerdict(None, [r"\boxed{5}"], {})
    texts = ["?", r"\boxed{2}", r"\boxed{-3}", r"\boxed{\text{0}}"] * 2
    assert verdict(texts, samples=8)[0] == CriticVerdict(None, texts, {})


def test_samples_must_be_positive():
    with pytest.raises(ValueError, match="samples"):
        verdict([], samples=0)
