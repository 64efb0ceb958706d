"""data_synthesis.solve against a scripted policy: the exact prompt, invalid solutions counted
and dropped, correct / incorrect quotas, extra rounds, real grading in the sandbox, and ids."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import pytest

from data_synthesis.solve import SolveSettings, SolveStage
from data_synthesis.stage import StageError
from genprm.format import SYSTEM_POLICY
from genprm.policy import AnswerGrader
from genprm.testing import ScriptedEngine

pytestmark = pytest.mark.sandbox(workers=1)

PROBLEM = "Add 4 and 6."
PROMPT = (
    f"<|im_start|>system\n{SYSTEM_POLICY}<|im_end|>\n"
    f"<|im_start|>user\n{PROBLEM}<|im_end|>\n"
    "<|im_start|>assistant\nStep 1: "
)
RECORD = {"id": "p7", "problem": PROBLEM, "answer": "10"}

CORRECT = "4 + 6 = 10.\nStep 2: So \\boxed{10}."
CORRECT_TOO = "4 + 6 = 10.\n\nStep 3: The answer is \\boxed{10.0}."
WRONG = "4 + 6 = 12.\nStep 2: So \\boxed{12}."
NO_ANSWER = "4 + 6 = 10.\nStep 2: Done."
ONE_STEP = "4 + 6 = \\boxed{10}."
LONG = "4 + 6 = " + "1" * 100  # cut at max_tokens


class Rounds(ScriptedEngine):
    """Answers the policy prompt with ``rounds[r][i]`` for sample i of request r, and records
    every request's sampling params."""

    def __init__(self, rounds: list[list[str]]):
        super().__init__(self._answer)
        self.rounds, self.params = rounds, []

    def _complete(self, request):
        self.params.append(request.params)
        return super()._complete(request)

    def _answer(self, prompt: str, index: int) -> str:
        assert prompt == PROMPT
        return self.rounds[len(self.params) - 1][index]


def solve(engine, sandbox, record=RECORD, **settings):
    stage = SolveStage(engine, sandbox, SolveSettings(max_tokens=50, **settings))
    return asyncio.run(stage.process(dict(record)))


def test_invalid_solutions_are_counted_and_quotas_stop_the_rounds(sandbox):
    engine = Rounds(
        [
            [CORRECT, LONG, ONE_STEP, WRONG],
            [CORRECT_TOO, CORRECT, NO_ANSWER, WRONG],
            [WRONG] * 4,
        ]
    )
    result = solve(engine, sandbox, seed=3)
    assert [(r["id"], r["correct"], r["final_answer"]) for r in result.records] == [
        ("p7-0", True, "10"),
        ("p7-1", False, "12"),
        ("p7-2", True, "10.0"),
        ("p7-3", False, None),
    ]
    assert result.records[0] == {
        "id": "p7-0",
        "problem_id": "p7",
        "problem": PROBLEM,
        "answer": "10",
        "steps": ["Step 1: 4 + 6 = 10.", "Step 2: So \\boxed{10}."],
        "final_answer": "10",
        "correct": True,
        "solve_tokens": len(CORRECT),
    }
    assert result.records[2]["steps"] == [
        "Step 1: 4 + 6 = 10.",
        "Step 2: The answer is \\boxed{10.0}.",
    ]
    tokens = sum(map(len, [CORRECT, ONE_STEP, WRONG, CORRECT_TOO, CORRECT, NO_ANSWER, WRONG]))
    assert result.stats == {
        "problems": 1,
        "solutions": 4,
        "correct": 2,
        "incorrect": 2,
        "invalid_truncated": 1,
        "invalid_one_step": 1,
        "samples": 8,
        "tokens": tokens + 50,
        "requests": 2,
    }
    assert [(p.n, p.seed, p.temperature, p.max_tokens) for p in engine.params] == [
        (4, 3, 0.7, 50),
        (4, 4, 0.7, 50),
    ]


def test_rounds_run_out_before_the_correct_quota_is_met(sandbox):
    engine = Rounds([[WRONG, WRONG], [LONG, NO_ANSWER], [WRONG, ONE_STEP]])
    result = solve(engine, sandbox, samples=2, keep_incorrect=1)
    assert [(r["id"], r["final_answer"]) for r in result.records] == [("p7-0", "12")]
    assert result.stats["requests"] == 3 and result.stats["samples"] == 6
    assert result.stats["solutions"] == result.stats["incorrect"] == 1
    assert engine.params[0].seed is None


def test_a_problem_without_a_valid_solution_is_dropped_with_the_reason(sandbox):
    result = solve(Rounds([[LONG, ONE_STEP]] * 2), sandbox, samples=2, rounds=2)
    assert result.records == []
    assert result.dropped == [RECORD | {"drop_reason": "no solution kept from 4 samples"}]
    assert result.stats["invalid_truncated"] == result.stats["invalid_one_step"] == 2


def test_no_quota_left_asks_for_nothing(sandbox):
    engine = Rounds([])
    result = solve(engine, sandbox, keep_correct=0, keep_incorrect=0)
    assert result.records == [] and result.stats["requests"] == 0 and engine.params == []


def test_settings_and_bad_records(sandbox):
    stage = SolveStage(Rounds([]), sandbox, SolveSettings(samples=8))
    assert stage.settings() == asdict(SolveSettings(samples=8))
    assert stage.settings()["samples"] == 8 and SolveStage.needs == ("id", "problem", "answer")
    with pytest.raises(StageError, match="'answer' must be a string"):
        asyncio.run(stage.process({"id": "a", "problem": "p", "answer": 10}))
    with pytest.raises(StageError, match="empty"):
        asyncio.run(stage.process({"id": "a", "problem": "p", "answer": " "}))
    with pytest.raises(ValueError):
        SolveSettings(samples=0)


def test_prompt_too_long_for_the_context(sandbox):
    engine = ScriptedEngine({}, max_model_len=len(PROMPT))
    with pytest.raises(StageError, match="more than the model's context"):
        solve(engine, sandbox)


class CountingSandbox:
    def __init__(self, sandbox):
        self.sandbox, self.runs = sandbox, 0

    async def arun(self, code, prelude=(), timeout=None):
        self.runs += 1
        return await self.sandbox.arun(code, prelude, timeout)


def test_grader_grades_each_pair_once_even_when_asked_at_once(sandbox):
    counting = CountingSandbox(sandbox)
    grader = AnswerGrader(counting)

    async def ask():
        return await asyncio.gather(
            grader.correct(["10", "12", "10", None], "10"),
            grader.correct(["10.0", "12"], "10"),
        )

    assert asyncio.run(ask()) == [[True, False, True, False], [True, False]]
    assert counting.runs == 3  # "10", "12", "10.0"; no answer needs no sandbox
    assert asyncio.run(grader.correct(["12", "10"], "10")) == [False, True]
    assert asyncio.run(grader.correct(["12"], "12")) == [True]
    assert counting.runs == 4
