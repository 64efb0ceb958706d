"""The scripted engine obeys the engine contract, and the request types validate their input."""

import asyncio
import math

import pytest

from genprm.backends import EngineError, Request, SamplingParams
from genprm.testing import Scripted, ScriptedEngine, contract

STORY = "Once upon a time, a cat named Tom lived in a small house by the sea. " * 4


@pytest.fixture
def engine():
    return ScriptedEngine(lambda prompt, index: STORY)


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
def test_contract(engine, check):
    contract.CHECKS[check](engine)


def test_samples_cycle_through_the_scripted_texts():
    engine = ScriptedEngine({"q": ["a", "b"]})
    (completion,) = engine.generate(["q"], SamplingParams(n=3, temperature=1.0))
    assert [s.text for s in completion.samples] == ["a", "b", "a"]
    assert engine.prompts == ["q"]


def test_unknown_prompt_fails_its_request_only_and_keeps_the_others():
    engine = ScriptedEngine({"known": "yes"})
    with pytest.raises(EngineError, match="request 1") as caught:
        engine.generate(["known", "unknown prompt", "known"])
    assert "unknown prompt" in str(caught.value.__cause__)
    assert caught.value.pending == [1]
    assert caught.value.results[0].samples[0].text == "yes"


def test_stop_string_inside_a_real_tokenizer_token(qwen_tokenizer):
    text = "Step 1 is right.\n\n[Verify]\nmore text"
    engine = ScriptedEngine({"p": text}, tokenizer=qwen_tokenizer)
    kept, cut = engine.generate(
        [
            Request("p", SamplingParams(stop="[Verify]", include_stop_str_in_output=True)),
            Request("p", SamplingParams(stop=("\n\n[",), max_tokens=100)),
        ]
    )
    assert kept.samples[0].text == "Step 1 is right.\n\n[Verify]"
    assert cut.samples[0].text == "Step 1 is right."
    assert cut.samples[0].stop_reason == "\n\n["
    # the tokens generated up to the stop are all reported, stripped text or not
    decoded = qwen_tokenizer.decode(cut.samples[0].token_ids)
    assert decoded.startswith("Step 1 is right.\n\n")


def test_scripted_logprobs_are_returned_as_given():
    tables = [{"Y": -0.1, "N": -2.4, "M": -5.0}, {"e": -0.01, "o": -4.0}, {"s": 0.0}]
    engine = ScriptedEngine({"judge": Scripted("Yes", top_logprobs=tables)})
    (completion,) = engine.generate(["judge"], SamplingParams(logprobs=2))
    positions = completion.samples[0].logprobs
    assert [p.chosen.token for p in positions] == ["Y", "e", "s"]
    assert [t.token for t in positions[0].top] == ["Y", "N"]
    assert math.isclose(positions[0].top[1].logprob, -2.4)
    assert positions[0].top[1].token_id == ord("N")


def test_scripted_logprobs_must_contain_the_chosen_token():
    engine = ScriptedEngine({"judge": Scripted("No", top_logprobs=[{"Y": -0.1}, {"o": 0.0}])})
    with pytest.raises(EngineError, match="lack the token 'N'"):
        engine.generate(["judge"], SamplingParams(logprobs=1))


def test_async_requests_from_one_event_loop():
    engine = ScriptedEngine(lambda prompt, index: prompt.upper())

    async def run():
        return await asyncio.gather(*(engine.agenerate(f"p{i}") for i in range(20)))

    completions = asyncio.run(run())
    assert [c.samples[0].text for c in completions] == [f"P{i}" for i in range(20)]
    assert engine.counters.requests == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 2, "temperature": 0.0}, "greedy"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop": ("",)}, "non-empty"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_requests_reject_bad_prompts():
    with pytest.raises(ValueError, match="token ids"):
        Request([])
    with pytest.raises(ValueError, match="token ids"):
        Request([1, "2"])
    with pytest.raises(ValueError, match="not both"):
        ScriptedEngine({}).generate([Request("p")], SamplingParams())
