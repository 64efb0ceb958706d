"""genprm.verifier against a scripted engine whose answers depend on the prompt: the exact
prompts of each stage (train and upstream renderings), code really executed in the sandbox and
spliced back, the round limit and the fallback, rewards from log-probabilities, Maj@N with
shared and independent histories, the cot and direct modes, and a context that is too short."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from genprm.backends.types import Sample
from genprm.format import (
    ANALYZE_END,
    ANALYZE_PREFIX,
    CODE_NOT_FOUND,
    OUTPUT_END,
    OUTPUT_PREFIX,
    SYSTEM_COT,
    SYSTEM_DIRECT,
    VERIFY_PREFIX,
    code_output_text,
)
from genprm.testing import Scripted, ScriptedEngine
from genprm.testing.tokenizers import qwen25_tokenizer
from genprm.verifier import GenPRMVerifier, first_wrong
from tests.support.judgements import CLOSING, PROBLEM, STEPS, judged


def step_of(prompt: str) -> int:
    return int(re.findall(r"Let's analyze the Paragraph (\d+)", prompt)[-1])


class Protocol:
    """Scripted answers by stage: the analysis, one python block that prints a sum, then the
    judgement with p(Yes) from ``p_yes[(step, sample index of the analysis)]``."""

    def __init__(self, p_yes: dict | None = None, code: dict | None = None):
        self.p_yes = p_yes or {}
        self.code = code or {}

    def __call__(self, prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return f"Path {index} checks step {t}.\n{ANALYZE_END}"
        path = int(re.findall(r"Path (\d+) checks step", prompt)[-1])
        if prompt.endswith(VERIFY_PREFIX):
            return self.code.get(t, f"print({t} * 100 + {path})") + "\n```\n"
        if prompt.endswith(OUTPUT_PREFIX):
            return judged("{Yes}$\n" + OUTPUT_END, self.p_yes.get((t, path), 0.9))
        p = self.p_yes.get((t, path), 0.9)
        word = "Yes" if p >= 0.5 else "No"
        return judged(CLOSING + OUTPUT_PREFIX + "{" + word + "}$\n" + OUTPUT_END, p)


def train_context(steps_so_far: int, turns: list[str], system: str = SYSTEM_COT) -> str:
    """ChatML (CharTokenizer's template) up to the assistant content of the next turn."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n"
    for index in range(steps_so_far):
        user = PROBLEM + "\n" + STEPS[0] if index == 0 else STEPS[index]
        text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        if index < steps_so_far - 1:
            text += turns[index] + "<|im_end|>\n"
    return text


def expected_turn(t: int, path: int, printed: str) -> str:
    return (
        ANALYZE_PREFIX.format(t=t)
        + f"Path {path} checks step {t}.\n{ANALYZE_END}"
        + VERIFY_PREFIX
        + f"print({t} * 100 + {path})\n```\n"
        + code_output_text(printed)
        + CLOSING
        + OUTPUT_PREFIX
        + "{Yes}$\n"
        + OUTPUT_END
    )


def test_every_prompt_of_a_three_step_solution_train_rendering(sandbox):
    engine = ScriptedEngine(Protocol())
    result = GenPRMVerifier(engine, sandbox).score(PROBLEM, STEPS)
    turns = [expected_turn(t, 0, str(t * 100)) for t in (1, 2, 3)]
    assert result.turns == turns  # the full executed turns: code output spliced in
    expected = []
    for t in (1, 2, 3):
        context = train_context(t, turns)
        analysis = ANALYZE_PREFIX.format(t=t) + f"Path 0 checks step {t}.\n{ANALYZE_END}"
        code = f"print({t} * 100 + 0)\n```\n"
        expected += [
            context + ANALYZE_PREFIX.format(t=t),
            context + analysis + VERIFY_PREFIX,
            context + analysis + VERIFY_PREFIX + code + code_output_text(str(t * 100)),
        ]
    assert engine.prompts == expected
    assert result.rewards == pytest.approx([0.9 / (0.9 + 0.1)] * 3)
    assert result.prediction == -1


def test_upstream_rendering_has_no_assistant_tag_and_goes_as_text(sandbox):
    sent = []

    class Recording(ScriptedEngine):
        def _submit(self, request):
            sent.append(request.prompt)
            return super()._submit(request)

    engine = Recording(Protocol())
    GenPRMVerifier(engine, sandbox, prompt_style="upstream").score(PROBLEM, STEPS[:2])
    first = f"<|im_start|>system\n{SYSTEM_COT}<|im_end|>\n<|im_start|>user\n{PROBLEM}\n{STEPS[0]}"
    assert sent[0] == first + ANALYZE_PREFIX.format(t=1)
    assert all(isinstance(prompt, str) for prompt in sent)
    step2 = [p for p in sent if step_of(p) == 2][0]
    assert f"<|im_start|>user\n{STEPS[1]}<analyze>" in step2  # the user turn runs on
    assert "<|im_start|>assistant" in step2  # step 1's turn is in the history, tagged


def test_train_rendering_goes_as_token_ids(sandbox):
    sent = []

    class Recording(ScriptedEngine):
        def _submit(self, request):
            sent.append(request.prompt)
            return super()._submit(request)

    GenPRMVerifier(Recording(Protocol()), sandbox).score(PROBLEM, STEPS[:1])
    assert sent and all(isinstance(prompt, list) for prompt in sent)


def test_later_code_uses_names_from_earlier_steps(sandbox):
    code = {1: "total = 2 + 3\nprint(total)", 2: "print(total * 2)"}
    engine = ScriptedEngine(Protocol(code=code))
    result = GenPRMVerifier(engine, sandbox).score(PROBLEM, STEPS[:2])
    assert code_output_text("5") in result.turns[0]
    assert code_output_text("10") in result.turns[1]  # step 1's block replayed silently first


def test_three_rounds_then_the_fallback_drops_the_verify_section(sandbox):
    def endless(prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return f"Looks fine.\n{ANALYZE_END}"
        if prompt.endswith(OUTPUT_PREFIX):
            return judged("{No}$\n" + OUTPUT_END, 0.3)
        return "print('again')\n```\n"  # never reaches </output>

    engine = ScriptedEngine(endless)
    result = GenPRMVerifier(engine, sandbox).score(PROBLEM, STEPS[:1])
    verify_requests = [p for p in engine.prompts if "<verify>" in p]
    assert len(verify_requests) == 3
    assert verify_requests[-1].count(code_output_text("again")) == 2
    fallback = ANALYZE_PREFIX.format(t=1) + "Looks fine.\n" + ANALYZE_END + OUTPUT_PREFIX
    assert engine.prompts[-1].endswith(fallback)
    assert result.turns == [fallback + "{No}$\n" + OUTPUT_END]
    assert result.rewards == pytest.approx([0.3]) and result.prediction == 0


def test_the_budget_counts_assistant_tokens_only(sandbox):
    engine = ScriptedEngine(Protocol())
    # One character per token: the analysis and the verify prefix already take more than 80.
    result = GenPRMVerifier(engine, sandbox, budget=80).score(PROBLEM, STEPS[:1])
    assert not any(p.endswith(VERIFY_PREFIX) for p in engine.prompts)
    assert "<verify>" not in result.turns[0] and result.turns[0].endswith(OUTPUT_END)


def test_no_code_block_is_reported_to_the_model(sandbox):
    def no_code(prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Fine.\n" + ANALYZE_END
        if prompt.endswith(VERIFY_PREFIX):
            return "print(1)"  # ends (end of sequence) before closing its block
        return judged(CLOSING + OUTPUT_PREFIX + "{Yes}$\n" + OUTPUT_END, 0.8)

    result = GenPRMVerifier(ScriptedEngine(no_code), sandbox).score(PROBLEM, STEPS[:1])
    assert code_output_text(CODE_NOT_FOUND) in result.turns[0]


def test_rewards_from_logprobs_and_the_first_wrong_step(sandbox):
    engine = ScriptedEngine(Protocol(p_yes={(1, 0): 0.8, (2, 0): 0.25, (3, 0): 0.9}))
    verifier = GenPRMVerifier(engine, sandbox)
    full = verifier.score(PROBLEM, STEPS)
    assert full.rewards == pytest.approx([0.8, 0.25, 0.9]) and full.prediction == 1
    [fast] = verifier.score_many([(PROBLEM, STEPS)])  # stops at the first wrong step
    assert fast.rewards == pytest.approx([0.8, 0.25]) and len(fast.turns) == 2


def test_a_missing_competitor_takes_the_smallest_returned_probability(sandbox):
    def only_yes(prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Fine.\n" + ANALYZE_END
        text = "{Yes}$\n" + OUTPUT_END
        tables = [{char: math.log(0.9)} for char in text]
        tables[1] = {"Y": math.log(0.6), "Z": math.log(0.3), "q": math.log(0.1)}
        return Scripted(text, tables)

    result = GenPRMVerifier(ScriptedEngine(only_yes), mode="cot").score(PROBLEM, STEPS[:1])
    assert result.rewards == pytest.approx([0.6 / (0.6 + 0.1)])


def test_no_judgement_is_half_and_no_logprobs_is_hard(sandbox):
    class NoLogprobs(ScriptedEngine):
        def _sample(self, scripted, params):
            sample = super()._sample(scripted, params)
            return Sample(sample.text, sample.token_ids, sample.finish_reason, sample.stop_reason)

    protocol = Protocol(p_yes={(1, 0): 0.7, (2, 0): 0.2})
    hard = GenPRMVerifier(NoLogprobs(protocol), sandbox).score(PROBLEM, STEPS[:2])
    assert hard.rewards == [1.0, 0.0]

    def rambling(prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Fine.\n" + ANALYZE_END
        return "{maybe}$\n" + OUTPUT_END

    unsure = GenPRMVerifier(ScriptedEngine(rambling), mode="cot").score(PROBLEM, STEPS[:1])
    assert unsure.rewards == [0.5] and unsure.prediction == -1


def test_maj_n_shares_path_zeros_history(sandbox):
    p_yes = {(1, 0): 0.9, (1, 1): 0.3, (1, 2): 0.6, (1, 3): 0.8}
    engine = ScriptedEngine(Protocol(p_yes=p_yes))
    result = GenPRMVerifier(engine, sandbox, maj=4, history="shared").score(PROBLEM, STEPS[:2])
    assert result.rewards[0] == pytest.approx((0.9 + 0.3 + 0.6 + 0.8) / 4)
    analyses = [p for p in engine.prompts if p.endswith(ANALYZE_PREFIX.format(t=2))]
    assert len(analyses) == 1  # one request, n=4, for all four samples of step 2
    assert "Path 0 checks step 1." in analyses[0]
    assert all(f"Path {i} checks step 1." not in analyses[0] for i in (1, 2, 3))
    assert result.turns[0] == expected_turn(1, 0, "100")


def test_maj_n_independent_histories(sandbox):
    engine = ScriptedEngine(Protocol())
    GenPRMVerifier(engine, sandbox, maj=3, history="independent").score(PROBLEM, STEPS[:2])
    analyses = [p for p in engine.prompts if p.endswith(ANALYZE_PREFIX.format(t=2))]
    assert len(analyses) == 3  # one per path: their histories differ
    assert sorted(re.findall(r"Path (\d) checks step 1\.", "".join(analyses))) == ["0", "1", "2"]


def test_cot_mode_skips_verification():
    engine = ScriptedEngine(Protocol(p_yes={(1, 0): 0.7}))
    result = GenPRMVerifier(engine, mode="cot").score(PROBLEM, STEPS[:1])
    analysis = ANALYZE_PREFIX.format(t=1) + f"Path 0 checks step 1.\n{ANALYZE_END}"
    assert engine.prompts[-1].endswith(analysis + OUTPUT_PREFIX)
    assert result.turns == [analysis + OUTPUT_PREFIX + "{Yes}$\n" + OUTPUT_END]
    assert result.rewards == pytest.approx([0.7])


def test_direct_mode_asks_for_the_judgement_only():
    def direct(prompt: str, index: int):
        return judged("{No}$\n" + OUTPUT_END, 0.1)

    engine = ScriptedEngine(direct)
    result = GenPRMVerifier(engine, mode="direct").score(PROBLEM, STEPS[:2])
    assert engine.prompts[0] == train_context(1, [], SYSTEM_DIRECT) + OUTPUT_PREFIX
    assert result.turns == [OUTPUT_PREFIX + "{No}$\n" + OUTPUT_END] * 2
    assert result.rewards == pytest.approx([0.1, 0.1]) and result.prediction == 0


def test_a_prompt_longer_than_the_context_fails_that_solution_only(sandbox):
    engine = ScriptedEngine(Protocol(), max_model_len=700)
    long_steps = ["x" * 800]
    verifier = GenPRMVerifier(engine, sandbox)
    short, long = verifier.score_many([(PROBLEM, STEPS[:1]), (PROBLEM, long_steps)])
    assert short.error is None and short.prediction == -1
    assert long.prediction is None and long.rewards == []
    assert "step 1" in long.error and "context of 700" in long.error


def test_a_tokenizer_with_multi_character_tokens_finds_the_judgement_token(sandbox):
    tokenizer = qwen25_tokenizer()
    yes, no = tokenizer.encode("Yes")[0], tokenizer.encode("No")[0]

    def script(prompt: str, index: int):
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Fine.\n" + ANALYZE_END
        text = "{Yes}$\n" + OUTPUT_END
        ids = tokenizer.encode(text)
        tables = [{tokenizer.decode([i]): math.log(0.9)} for i in ids]
        where = ids.index(yes)
        tables[where] = {tokenizer.decode([yes]): math.log(0.75), tokenizer.decode([no]): -1.6}
        return Scripted(text, tables)

    engine = ScriptedEngine(script, tokenizer=tokenizer)
    result = GenPRMVerifier(engine, mode="cot").score(PROBLEM, STEPS[:1])
    p_no = math.exp(-1.6)
    assert result.rewards == pytest.approx([0.75 / (0.75 + p_no)])


def test_invalid_options_are_value_errors():
    engine = ScriptedEngine({})
    with pytest.raises(ValueError, match="mode"):
        GenPRMVerifier(engine, mode="fast")
    with pytest.raises(ValueError, match="executes code"):
        GenPRMVerifier(engine)  # cot+code without a sandbox
    with pytest.raises(ValueError, match="at least 1"):
        GenPRMVerifier(engine, mode="cot", maj=0)


def test_first_wrong():
    assert first_wrong([]) == -1 and first_wrong([0.49]) == 0


def test_scoring_step_by_step_continues_a_shared_state():
    engine = ScriptedEngine(Protocol(p_yes={(1, 0): 0.8, (2, 0): 0.6}))
    verifier = GenPRMVerifier(engine, mode="cot")
    whole = verifier.score(PROBLEM, STEPS[:2])
    before = len(engine.prompts)
    first, state = asyncio.run(verifier.ascore_next(PROBLEM, STEPS[:1], verifier.start()))
    # Two different second steps after one shared first: step 1 is not scored again.
    second, after = asyncio.run(verifier.ascore_next(PROBLEM, STEPS[:2], state))
    other, _ = asyncio.run(verifier.ascore_next(PROBLEM, [STEPS[0], "5 * 3 = 15."], state))
    assert [first, second] == pytest.approx(whole.rewards) and after.turns == whole.turns
    prompts = engine.prompts[before:]
    assert len(prompts) == 2 + 2 + 2  # analysis and judgement per scored step
    assert "5 * 3 = 15." in prompts[-1] and "5 * 2 = 10." not in prompts[-1]
    assert other == pytest.approx(0.6)  # scripted by step number and path
    # cot: the tokens generated are the turn less the prefixes the verifier wrote itself.
    written = sum(len(ANALYZE_PREFIX.format(t=t)) + len(OUTPUT_PREFIX) for t in (1, 2))
    assert after.tokens == sum(map(len, after.turns)) - written
    with pytest.raises(ValueError, match="not the state before step 3"):
        asyncio.run(verifier.ascore_next(PROBLEM, STEPS, state))
