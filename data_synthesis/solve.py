"""The ``solve`` stage (spec §5): policy solutions of each problem, graded against its reference.

Input ``{"id", "problem", "answer"}``; output one record per kept solution,
``{"id": "<problem id>-<k>", "problem_id", "problem", "answer", "steps", "final_answer",
"correct", "solve_tokens"}``. Each round asks for ``samples`` solutions in one request; truncated
and one-step solutions are invalid (counted, dropped); rounds go on until ``keep_correct`` correct
and ``keep_incorrect`` incorrect solutions are kept, or ``rounds`` run out. A problem that keeps
no solution is returned as dropped, with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from genprm.backends.types import ContextTooLong, Engine, Sample, SamplingParams
from genprm.grading import DEFAULT_TIMEOUT_S, extract_boxed
from genprm.policy import FIRST_STEP, AnswerGrader, policy_context, policy_request
from genprm.sandbox import Sandbox
from genprm.steps import split_policy_steps

from .stage import Stage, StageError, StageResult


@dataclass(frozen=True)
class SolveSettings:
    samples: int = 4
    """Solutions asked for per round, in one request (``n``)."""
    rounds: int = 3
    """Rounds at most per problem."""
    keep_correct: int = 2
    """Correct solutions kept per problem at most (the first found)."""
    keep_incorrect: int = 2
    """Incorrect solutions kept per problem at most (the first found)."""
    temperature: float = 0.7
    """Sampling temperature of the policy (the rollouts' temperature, spec §5)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 samples from the policy's whole distribution."""
    max_tokens: int = 1024
    """Generated tokens per solution at most; a longer one is truncated, hence invalid."""
    seed: int | None = None
    """Seed of round 0's request (round r uses ``seed + r``); None for unseeded sampling."""
    grade_timeout: float = DEFAULT_TIMEOUT_S
    """Seconds math-verify may take to grade one final answer."""

    def __post_init__(self):
        for name, least in (("samples", 1), ("rounds", 1), ("max_tokens", 1),
                            ("keep_correct", 0), ("keep_incorrect", 0)):  # fmt: skip
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")


class SolveStage(Stage):
    """Samples, splits and grades policy solutions of one problem (see the module)."""

    name = "solve"
    needs = ("id", "problem", "answer")

    def __init__(self, engine: Engine, sandbox: Sandbox, settings: SolveSettings | None = None):
        self.engine = engine
        self.config = settings or SolveSettings()
        self.grader = AnswerGrader(sandbox, self.config.grade_timeout)

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    async def process(self, record: dict[str, Any]) -> StageResult:
        problem_id, problem, reference = _checked(record)
        config = self.config
        text = policy_context(self.engine.tokenizer, problem) + FIRST_STEP
        stats = dict.fromkeys(
            ("samples", "tokens", "requests", "invalid_truncated", "invalid_one_step"), 0
        )
        kept: list[dict[str, Any]] = []
        quota = {True: config.keep_correct, False: config.keep_incorrect}
        for round_index in range(config.rounds):
            if not any(quota.values()):
                break
            seed = None if config.seed is None else config.seed + round_index
            params = SamplingParams(
                n=config.samples,
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                seed=seed,
            )
            try:
                request = policy_request(self.engine, text, params)
            except ContextTooLong as error:  # this problem's prompt: the record's error
                raise StageError(str(error)) from error
            completion = await self.engine.agenerate(request)
            stats["requests"] += 1
            stats["samples"] += len(completion.samples)
            stats["tokens"] += sum(len(sample.token_ids) for sample in completion.samples)
            valid = _valid_solutions(completion.samples, stats)
            answers = [extract_boxed(sample.text) for sample, _ in valid]
            grades = await self.grader.correct(answers, reference)
            for (sample, steps), answer, correct in zip(valid, answers, grades):
                if quota[correct]:
                    quota[correct] -= 1
                    kept.append(
                        {
                            "id": f"{problem_id}-{len(kept)}",
                            "problem_id": problem_id,
                            "problem": problem,
                            "answer": reference,
                            "steps": steps,
                            "final_answer": answer,
                            "correct": correct,
                            "solve_tokens": len(sample.token_ids),
                        }
                    )
        correct = sum(solution["correct"] for solution in kept)
        stats.update(
            problems=1, solutions=len(kept), correct=correct, incorrect=len(kept) - correct
        )
        dropped = []
        if not kept:
            reason = f"no solution kept from {stats['samples']} samples"
            dropped.append(dict(record, drop_reason=reason))
        return StageResult(kept, stats, dropped)


def _checked(record: dict[str, Any]) -> tuple[str, str, str]:
    for key in SolveStage.needs:
        if not isinstance(record[key], str):
            raise StageError(f"{key!r} must be a string, got {type(record[key]).__name__}")
    if not record["answer"].strip():
        raise StageError("'answer' (the reference answer) is empty")
    return record["id"], record["problem"], record["answer"]


def _valid_solutions(samples: list[Sample], stats: dict[str, int]) -> list[tuple[Sample, list]]:
    """The samples with their steps; invalid ones are left out and counted by reason."""
    valid = []
    for sample in samples:
        if sample.finish_reason != "stop":
            stats["invalid_truncated"] += 1
            continue
        steps = split_policy_steps(sample.text)
        if len(steps) < 2:
            stats["invalid_one_step"] += 1
        else:
            valid.append((sample, steps))
    return valid
