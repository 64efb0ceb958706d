"""The critique-refine loop: a problem's solution scored, graded and sent back to the policy with
the critique of its first rejected step, turn after turn (at most ``MAX_TURNS``), many problems
in flight; one ``refine.jsonl`` line per problem."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from genprm.backends import Engine, Sample
from genprm.backends.types import ContextTooLong
from genprm.grading import extract_boxed
from genprm.policy import AnswerGrader, policy_request
from genprm.steps import split_paragraphs
from genprm.verifier import GenPRMVerifier

from .prompts import (
    MAX_TOKENS,
    QWEN_SYSTEM,
    extract_critique,
    policy_messages,
    policy_params,
    refine_messages,
)

MAX_TURNS = 3


class Policy:
    """The policy model behind an engine: first solutions and refined ones (§7 prompts, sent
    as token ids of the model's own chat template with the generation prompt)."""

    def __init__(
        self,
        engine: Engine,
        system: str | None = QWEN_SYSTEM,
        max_tokens: int = MAX_TOKENS,
        seed: int | None = None,
    ):
        self.engine, self.system = engine, system
        self.params = policy_params(max_tokens, seed)

    async def answer(self, messages: list[dict]) -> Sample:
        """One sample for ``messages``; ContextTooLong when the prompt does not fit the context."""
        text = self.engine.apply_chat_template(messages, add_generation_prompt=True)
        completion = await self.engine.agenerate(policy_request(self.engine, text, self.params))
        return completion.samples[0]

    async def solve(self, problem: str) -> Sample:
        return await self.answer(policy_messages(problem, self.system))

    async def refine(self, problem: str, steps: Sequence[str], index: int, critique: str):
        return await self.answer(refine_messages(problem, steps, index, critique, self.system))


@dataclass
class Refiner:
    """Scores, grades and refines one problem's solution at a time (many in flight)."""

    verifier: GenPRMVerifier
    policy: Policy
    grader: AnswerGrader
    max_turns: int = MAX_TURNS

    async def assess(self, problem: str, reference: str, text: str) -> tuple[dict, list[str]]:
        """A turn record for the solution ``text`` and the verifier's turns (its rationales).
        ``prediction``: the first rejected step (0-based), -1 for none, None when the solution
        could not be scored (``error`` says why)."""
        steps = split_paragraphs(text)
        final_answer = extract_boxed(text)
        grading = self.grader.correct([final_answer], reference)
        turn: dict[str, Any] = {"text": text, "steps": steps}
        if not steps:
            [correct] = await grading
            result_turns: list[str] = []
            turn.update(step_rewards=[], prediction=None, error="no text to score")
        else:
            scoring = self.verifier.ascore(problem, steps, stop_at_first_error=True)
            result, [correct] = await asyncio.gather(scoring, grading)
            result_turns = result.turns
            turn.update(step_rewards=result.rewards, prediction=result.prediction)
            if result.error is not None:
                turn["error"] = result.error
        turn.update(final_answer=final_answer, correct=correct)
        return turn, result_turns

    async def run(self, record: dict, text: str | None = None) -> dict:
        """The output line for one problem (``{"id", "problem", "answer"}``): its first
        solution (``text``, else the policy's) and every refinement, each scored and graded."""
        problem, reference = record["problem"], record["answer"]
        line: dict[str, Any] = {"id": record["id"], "answer": reference, "turns": []}
        first_finish = None
        if text is None:
            try:
                sample = await self.policy.solve(problem)
            except ContextTooLong as error:
                line["turns"].append(_unscored("", f"policy: {error}"))
                line["error"] = f"policy: {error}"
                return line
            text, first_finish = sample.text, sample.finish_reason
        turn, rationales = await self.assess(problem, reference, text)
        if first_finish is not None:
            turn["finish_reason"] = first_finish
        line["turns"].append(turn)
        for _ in range(self.max_turns):
            index = turn["prediction"]
            if index is None or index < 0:
                break  # accepted (or unscorable): the solution stands
            critique = extract_critique(rationales[index])
            try:
                sample = await self.policy.refine(problem, turn["steps"], index, critique)
            except ContextTooLong as error:
                line["error"] = f"policy: {error}"
                break
            turn, rationales = await self.assess(problem, reference, sample.text)
            turn.update(finish_reason=sample.finish_reason, refined_step=index, critique=critique)
            line["turns"].append(turn)
        return line


def _unscored(text: str, error: str) -> dict:
    return {
        "text": text,
        "steps": [],
        "step_rewards": [],
        "prediction": None,
        "final_answer": None,
        "correct": False,
        "error": error,
    }


async def refine_all(
    refiner: Refiner,
    records: list[dict],
    write: Callable[[bytes], None],
    progress: Callable[[dict], None] | None = None,
    concurrency: int = 64,
) -> None:
    """Refine every record (``{"id", "problem", "answer"}``, with ``"text"`` when the first
    solution is given), ``concurrency`` problems in flight; each line is written as its
    problem finishes."""
    bound = asyncio.Semaphore(concurrency)

    async def one(record: dict) -> None:
        async with bound:
            line = await refiner.run(record, record.get("text"))
        write((json.dumps(line, ensure_ascii=False) + "\n").encode())
        if progress is not None:
            progress(line)

    await asyncio.gather(*(one(record) for record in records))
