"""Adaptive mode (upstream's dev branch): each step judged directly first, then again with
analysis, then with executed code, while its reward is ambiguous; the deciding level's reward,
turns and history; Maj@N decided per step; every level's tokens counted. A scripted engine whose
answers depend on the level a prompt asks for, and the real sandbox."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from genprm.format import (
    ANALYZE_END,
    ANALYZE_PREFIX,
    OUTPUT_PREFIX,
    SYSTEM_COT,
    VERIFY_PREFIX,
    code_output_text,
)
from genprm.testing import ScriptedEngine
from genprm.verifier import GenPRMVerifier
from tests.support.judgements import CLOSING, PROBLEM, STEPS, judged, judgement, verdict


class Levels:
    """Answers by the level a prompt asks for: p(Yes) of step t, sample path i at ``level``
    from ``p_yes[(t, level)]`` (a number, or a list by path)."""

    def __init__(self, p_yes: dict):
        self.p_yes = p_yes
        self.analyses = Counter()  # per prompt and sample: the cot level's, then cot+code's

    def p(self, t: int, level: str, index: int) -> float:
        value = self.p_yes[(t, level)]
        return value[index] if isinstance(value, list) else value

    def __call__(self, prompt: str, index: int):
        t = len(re.findall(r"<\|im_start\|>user\n", prompt))
        if prompt.endswith("<|im_start|>assistant\n" + OUTPUT_PREFIX):
            return judgement(self.p(t, "direct", index))
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            self.analyses[prompt, index] += 1
            level = "cot" if self.analyses[prompt, index] == 1 else "cot+code"
            return f"Analysis at {level} of step {t}, path {index}.\n{ANALYZE_END}"
        level, path = re.findall(r"Analysis at (\S+) of step \d+, path (\d+)\.", prompt)[-1]
        p = self.p(t, level, int(path))
        if prompt.endswith(ANALYZE_END + OUTPUT_PREFIX):
            return judgement(p)
        if prompt.endswith(VERIFY_PREFIX):
            return f"print({t} * 11)\n```\n"
        return judged(CLOSING + OUTPUT_PREFIX + verdict(p), p)


def test_each_step_takes_the_cheapest_level_that_decides_it(sandbox):
    p_yes = {
        (1, "direct"): 0.95,  # decided at once
        (2, "direct"): 0.5, (2, "cot"): 0.05,  # decided with analysis
        (3, "direct"): 0.6, (3, "cot"): 0.3, (3, "cot+code"): 0.8,  # the last level decides
    }  # fmt: skip
    engine = ScriptedEngine(Levels(p_yes))
    verifier = GenPRMVerifier(engine, sandbox, mode="adaptive")
    result = verifier.score(PROBLEM, STEPS)
    assert result.levels == ["direct", "cot", "cot+code"]
    assert result.rewards == pytest.approx([0.95, 0.05, 0.8]) and result.prediction == 1
    analysis = "Analysis at {} of step {}, path 0.\n" + ANALYZE_END
    assert result.turns == [
        OUTPUT_PREFIX + verdict(0.95),
        ANALYZE_PREFIX.format(t=2) + analysis.format("cot", 2) + OUTPUT_PREFIX + verdict(0.05),
        ANALYZE_PREFIX.format(t=3) + analysis.format("cot+code", 3) + VERIFY_PREFIX
        + "print(3 * 11)\n```\n" + code_output_text("33") + CLOSING + OUTPUT_PREFIX + verdict(0.8),
    ]  # fmt: skip
    assert all(prompt.startswith(f"<|im_start|>system\n{SYSTEM_COT}") for prompt in engine.prompts)
    # the next step continues the deciding level's turn, not the ambiguous direct one
    step3 = [prompt for prompt in engine.prompts if prompt.count("<|im_start|>user") == 3]
    after_step2 = f"{STEPS[1]}<|im_end|>\n<|im_start|>assistant\n"
    assert step3 and all(p.split(after_step2)[1].startswith(result.turns[1]) for p in step3)


def test_a_steps_tokens_count_every_level_it_took(sandbox):
    p_yes = {(1, "direct"): 0.5, (1, "cot"): 0.3, (1, "cot+code"): 0.8}
    engine = ScriptedEngine(Levels(p_yes))
    verifier = GenPRMVerifier(engine, sandbox, mode="adaptive")
    _, state = asyncio.run(verifier.ascore_next(PROBLEM, STEPS[:1], verifier.start()))
    assert engine.counters.requests == 1 + 2 + 3  # direct; analysis, judgement; code rounds
    assert state.tokens == engine.counters.generated_tokens  # not the last level's alone


@pytest.mark.parametrize(("ambiguity", "levels"), [(0.1, ["cot"]), (0.2, ["direct"])])
def test_the_ambiguity_sets_how_close_to_0_or_1_decides(ambiguity, levels, sandbox):
    engine = ScriptedEngine(Levels({(1, "direct"): 0.85, (1, "cot"): 0.95}))
    verifier = GenPRMVerifier(engine, sandbox, mode="adaptive", ambiguity=ambiguity)
    assert verifier.score(PROBLEM, STEPS[:1]).levels == levels


@pytest.mark.parametrize("history", ["independent", "shared"])
def test_maj_n_goes_up_a_level_on_the_steps_mean_reward(history, sandbox):
    # the two paths disagree at once (mean 0.5); with analysis both reject the step
    p_yes = {(1, "direct"): [0.95, 0.05], (1, "cot"): [0.04, 0.02], (2, "direct"): 0.97}
    engine = ScriptedEngine(Levels(p_yes))
    verifier = GenPRMVerifier(engine, sandbox, maj=2, mode="adaptive", history=history)
    result = verifier.score(PROBLEM, STEPS[:2])
    assert result.levels == ["cot", "direct"]
    assert result.rewards == pytest.approx([0.03, 0.97])
    direct = [p for p in engine.prompts if p.endswith("<|im_start|>assistant\n" + OUTPUT_PREFIX)]
    assert len(direct) == 1 + (2 if history == "independent" else 1)  # n=2 where they share


def test_the_other_modes_record_no_levels_and_adaptive_needs_a_sandbox(sandbox):
    engine = ScriptedEngine(Levels({(1, "direct"): 0.95}))
    assert GenPRMVerifier(engine, mode="direct").score(PROBLEM, STEPS[:1]).levels is None
    with pytest.raises(ValueError, match='"adaptive" executes code'):
        GenPRMVerifier(engine, mode="adaptive")
    with pytest.raises(ValueError, match="ambiguity"):
        GenPRMVerifier(engine, sandbox, mode="adaptive", ambiguity=0.6)
