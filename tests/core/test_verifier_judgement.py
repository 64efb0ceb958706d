"""The verifier's judgement (spec §3 item 4 and the notes after item 6): the reward pools the
cases of Yes and No, a competitor missing from the top log-probabilities never flips the
result, and direct mode asks for the budget less the assistant prefix (2039 of 2048 tokens with
Qwen's tokenizer), with 20 tokens the fallback's limit only. Character tokens and the real
Qwen2.5 tokenizer."""

from __future__ import annotations

import math

import pytest

from genprm.format import ANALYZE_END, ANALYZE_PREFIX, OUTPUT_END, OUTPUT_PREFIX
from genprm.testing import CharTokenizer, Scripted, ScriptedEngine
from genprm.testing.tokenizers import qwen25_tokenizer
from genprm.verifier import BUDGET, JUDGEMENT_TOKENS, GenPRMVerifier

PROBLEM = "Add 2 and 3."
STEPS = ["2 + 3 = 5."]


@pytest.fixture(scope="module")
def qwen():
    return qwen25_tokenizer()


class Recording(ScriptedEngine):
    """A scripted engine that keeps every request's sampling parameters."""

    def __init__(self, script, tokenizer=None):
        super().__init__(script, tokenizer=tokenizer)
        self.params = []

    def _submit(self, request):
        self.params.append(request.params)
        return super()._submit(request)


def judgement(tokenizer, word: str, probabilities: dict[str, float]) -> Scripted:
    """``{word}$`` and the output's end, with ``probabilities`` (token text -> p) as the top
    log-probabilities of the judgement's token (the one after the brace, with both
    tokenizers), 0.9 for the sampled token elsewhere."""
    text = "{" + word + "}$\n" + OUTPUT_END
    ids = tokenizer.encode(text, add_special_tokens=False)
    tables = [{tokenizer.decode([token_id]): math.log(0.9)} for token_id in ids]
    tables[1] = {token: math.log(p) for token, p in probabilities.items()}
    return Scripted(text, tables)


def direct_reward(tokenizer, word: str, probabilities: dict[str, float]) -> float:
    engine = ScriptedEngine(lambda prompt, index: judgement(tokenizer, word, probabilities),
                            tokenizer=tokenizer)  # fmt: skip
    return GenPRMVerifier(engine, mode="direct").score(PROBLEM, STEPS).rewards[0]


@pytest.mark.parametrize("tokenizer_name", ["characters", "qwen2.5"])
def test_the_cases_of_each_word_are_pooled(tokenizer_name, qwen):
    tokenizer = qwen if tokenizer_name == "qwen2.5" else CharTokenizer()
    first = {
        word: tokenizer.decode(tokenizer.encode(word)[:1]) for word in ("Yes", "yes", "No", "no")
    }
    # a lowercase judgement against a capitalised competitor: not 0.5, not ~0
    assert direct_reward(tokenizer, "yes", {first["yes"]: 0.7, first["No"]: 0.2}) == (
        pytest.approx(0.7 / 0.9)
    )
    pooled = {first["No"]: 0.5, first["yes"]: 0.25, first["Yes"]: 0.15, first["no"]: 0.1}
    assert direct_reward(tokenizer, "No", pooled) == pytest.approx(0.4 / 1.0)
    assert direct_reward(tokenizer, "no", pooled | {first["no"]: 0.05}) == pytest.approx(0.4 / 0.95)


@pytest.mark.parametrize("word", ["Yes", "yes", "No", "no"])
def test_a_missing_competitor_never_flips_the_judgement(word):
    tokenizer = CharTokenizer()
    others = {"x": 0.2, "z": 0.1}  # neither case of the other word is returned
    reward = direct_reward(tokenizer, word, {word[0]: 0.6, **others})
    competitor = min(others.values())  # the smallest probability returned
    if word.lower() == "yes":
        assert reward == pytest.approx(0.6 / (0.6 + competitor))
    else:
        assert reward == pytest.approx(competitor / (0.6 + competitor))


def test_a_sampled_token_below_the_top_ones_still_counts():
    tokenizer = CharTokenizer()
    likelier = {chr(ord("A") + i): 0.04 for i in range(20)}  # 20 returned, "N" among them
    reward = direct_reward(tokenizer, "yes", {"y": 0.01, **likelier})
    assert reward == pytest.approx(0.01 / (0.01 + 0.04))


@pytest.mark.parametrize("tokenizer_name", ["characters", "qwen2.5"])
def test_direct_mode_asks_for_the_budget_less_the_prefix(tokenizer_name, qwen):
    tokenizer = qwen if tokenizer_name == "qwen2.5" else CharTokenizer()
    engine = Recording(lambda prompt, index: "{Yes}$\n" + OUTPUT_END, tokenizer)
    GenPRMVerifier(engine, mode="direct").score(PROBLEM, STEPS)
    prefix = len(tokenizer.encode(OUTPUT_PREFIX, add_special_tokens=False))
    assert [params.max_tokens for params in engine.params] == [BUDGET - prefix]
    if tokenizer_name == "qwen2.5":
        assert engine.params[0].max_tokens == 2039


def test_the_fallback_alone_asks_for_twenty_tokens():
    def script(prompt: str, index: int) -> str:
        if prompt.endswith(ANALYZE_PREFIX.format(t=1)):
            return "x" * 40 + "\n" + ANALYZE_END  # the analysis spends the whole budget
        return "{Yes}$\n" + OUTPUT_END

    engine = Recording(script)
    budget = len(ANALYZE_PREFIX.format(t=1)) + 45
    GenPRMVerifier(engine, mode="cot", budget=budget).score(PROBLEM, STEPS)
    assert [params.max_tokens for params in engine.params] == [budget, JUDGEMENT_TOKENS]
