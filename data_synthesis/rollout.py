"""The ``rollout`` stage (spec §5): Monte Carlo scores of every step of a policy solution.

Input: the solve stage's records. Output: the record plus ``mc`` (one score per step),
``mc_initial`` (MC(s_0), the problem's pass rate from scratch), ``rollouts`` (rollouts spent per
step), ``k`` (rollouts per step, from the problem's difficulty) and ``rollout_tokens``.

MC(i) is the share of ``k`` rollouts after step i whose final answer equals the reference; the
last step scores 1.0 or 0.0 from the solution's own answer. With ``early_stop`` a step scoring 0
ends the rollouts: every later step, the last included, scores 0 with none spent. MC(s_0) takes
``initial_k`` rollouts once per problem, shared by the problem's solutions in flight and kept in
``cache_path`` for a resumed run. Its cost counts in the stats of the solution that computed it,
named in the cache: a resumed run that redoes that solution (its result was never kept) counts
the cost again from the cache, so a resumed run's totals equal an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from genprm.backends.types import ContextTooLong, Engine, Request, SamplingParams
from genprm.grading import DEFAULT_TIMEOUT_S, extract_boxed
from genprm.paths import write_all
from genprm.policy import FIRST_STEP, AnswerGrader, policy_context, policy_request
from genprm.sandbox import Sandbox

from .stage import Stage, StageError, StageResult
from .store import cut_torn_line


@dataclass(frozen=True)
class RolloutSettings:
    initial_k: int = 32
    """Rollouts from scratch that estimate MC(s_0), once per problem."""
    k_hard: int = 128
    """Rollouts per step when MC(s_0) < ``hard_below`` (the paper's K)."""
    k_medium: int = 64
    """Rollouts per step when ``hard_below`` <= MC(s_0) < ``easy_from``."""
    k_easy: int = 32
    """Rollouts per step when MC(s_0) >= ``easy_from``."""
    hard_below: float = 0.1
    easy_from: float = 0.9
    early_stop: bool = True
    """Stop at the first step with MC = 0 (later steps score 0); False rolls out every step."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    """Generated tokens per rollout at most; a cut rollout usually has no answer (wrong)."""
    max_n_per_request: int = 64
    """Rollouts per request at most; more go as several requests (seeds ``seed + j``)."""
    seed: int | None = None
    """Seed of every request (the j-th request of one prompt: ``seed + j``); None: unseeded."""
    grade_timeout: float = DEFAULT_TIMEOUT_S
    """Seconds math-verify may take to grade one final answer."""

    def __post_init__(self):
        counts = ("initial_k", "k_hard", "k_medium", "k_easy", "max_n_per_request", "max_tokens")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.hard_below <= self.easy_from <= 1:
            raise ValueError("need 0 <= hard_below <= easy_from <= 1")

    def k_for(self, mc_initial: float) -> int:
        """Rollouts per step for a problem of pass rate ``mc_initial``.

        >>> [RolloutSettings().k_for(mc) for mc in (0.0, 0.09375, 0.1, 0.875, 0.9, 1.0)]
        [128, 128, 64, 64, 32, 32]
        """
        if mc_initial < self.hard_below:
            return self.k_hard
        return self.k_medium if mc_initial < self.easy_from else self.k_easy


@dataclass(frozen=True)
class _PassRate:
    share: float
    rollouts: int
    tokens: int
    requests: int


class RolloutStage(Stage):
    """MC scores of one solution's steps (see the module). ``cache_path``: a JSONL file of
    MC(s_0) per problem, read at construction and appended to as each is computed (one line,
    one write; a torn last line from a crash is cut off)."""

    name = "rollout"
    needs = ("id", "problem", "answer", "steps", "correct", "problem_id")

    def __init__(
        self,
        engine: Engine,
        sandbox: Sandbox,
        settings: RolloutSettings | None = None,
        cache_path: str | os.PathLike | None = None,
    ):
        self.engine = engine
        self.config = settings or RolloutSettings()
        self.grader = AnswerGrader(sandbox, self.config.grade_timeout)
        self.cache_path = None if cache_path is None else Path(cache_path)
        self._mc_initial: dict[str, float] = {}
        self._computing: dict[str, asyncio.Task] = {}
        # problem_id -> (solution id, cost) of cached pass rates, until that solution is redone
        self._cached_costs: dict[str, tuple[str, _PassRate]] = {}
        if self.cache_path is not None:
            cached = _read_cache(self.cache_path, self.config.initial_k)
            self._mc_initial = {problem: rate.share for problem, (_, rate) in cached.items()}
            self._cached_costs = {p: entry for p, entry in cached.items() if entry[0] is not None}

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    async def process(self, record: dict[str, Any]) -> StageResult:
        steps, reference = _checked(record)
        config = self.config
        context = policy_context(self.engine.tokenizer, record["problem"])
        mc_initial, initial = await self._initial(
            record["id"], record["problem_id"], context, reference
        )
        k = config.k_for(mc_initial)
        mc: list[float] = []
        spent: list[int] = []
        tokens = requests = skipped = 0
        for i in range(len(steps)):
            last = i == len(steps) - 1
            if config.early_stop and mc and mc[-1] == 0:
                mc.append(0.0)
                spent.append(0)
                skipped += not last
            elif last:
                mc.append(1.0 if record["correct"] else 0.0)
                spent.append(0)
            else:
                prefix = "\n\n".join(steps[: i + 1]) + f"\n\nStep {i + 2}: "
                rate = await self._pass_rate(context + prefix, reference, k)
                mc.append(rate.share)
                spent.append(rate.rollouts)
                tokens += rate.tokens
                requests += rate.requests
        stats = {
            "solutions": 1,
            "steps": len(steps),
            "rollouts": sum(spent) + (initial.rollouts if initial else 0),
            "tokens": tokens + (initial.tokens if initial else 0),
            "requests": requests + (initial.requests if initial else 0),
            "initial_pass_rates": int(initial is not None),
            "early_stopped": skipped,
        }
        labelled = dict(
            record, mc=mc, mc_initial=mc_initial, rollouts=spent, k=k, rollout_tokens=tokens
        )
        return StageResult([labelled], stats)

    async def _initial(
        self, solution_id: str, problem_id: str, context: str, reference: str
    ) -> tuple[float, _PassRate | None]:
        """MC(s_0) of the problem, and the pass rate's cost for the one solution that counts
        it: the one that computed it, now or in the run that wrote the cache (None for every
        other)."""
        if problem_id in self._mc_initial:
            by, rate = self._cached_costs.get(problem_id, (None, None))
            if by == solution_id:
                del self._cached_costs[problem_id]
                return rate.share, rate
            return self._mc_initial[problem_id], None
        task = self._computing.get(problem_id)
        if task is not None and not task.done():
            # shielded: a cancelled solution must not cancel the pass rate others wait for
            return (await asyncio.shield(task)).share, None
        compute = self._compute_initial(solution_id, problem_id, context, reference)
        task = asyncio.ensure_future(compute)
        self._computing[problem_id] = task
        rate = await asyncio.shield(task)
        return rate.share, rate

    async def _compute_initial(
        self, solution_id: str, problem_id: str, context: str, reference: str
    ) -> _PassRate:
        try:
            rate = await self._pass_rate(context + FIRST_STEP, reference, self.config.initial_k)
            if self.cache_path is not None:
                entry = {
                    "problem_id": problem_id,
                    "mc_initial": rate.share,
                    "rollouts": rate.rollouts,
                    "tokens": rate.tokens,
                    "requests": rate.requests,
                    "by": solution_id,
                }
                _append_line(self.cache_path, json.dumps(entry, ensure_ascii=False))
            self._mc_initial[problem_id] = rate.share
            return rate
        finally:
            del self._computing[problem_id]

    async def _pass_rate(self, text: str, reference: str, k: int) -> _PassRate:
        """The share of ``k`` rollouts continuing ``text`` whose final answer is correct."""
        config = self.config
        params = SamplingParams(
            temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens
        )
        try:
            base = policy_request(self.engine, text, params)
        except ContextTooLong as error:  # this solution's prefix: the record's error
            raise StageError(str(error)) from error
        requests = []
        for j, start in enumerate(range(0, k, config.max_n_per_request)):
            n = min(config.max_n_per_request, k - start)
            seed = None if config.seed is None else config.seed + j
            requests.append(Request(base.prompt, replace(base.params, n=n, seed=seed)))
        completions = await asyncio.gather(*map(self.engine.agenerate, requests))
        samples = [sample for completion in completions for sample in completion.samples]
        answers = [extract_boxed(sample.text) for sample in samples]
        correct = await self.grader.correct(answers, reference)
        tokens = sum(len(sample.token_ids) for sample in samples)
        return _PassRate(sum(correct) / len(samples), len(samples), tokens, len(requests))


def _checked(record: dict[str, Any]) -> tuple[list[str], str]:
    for key in ("id", "problem", "answer", "problem_id"):
        if not isinstance(record[key], str):
            raise StageError(f"{key!r} must be a string, got {type(record[key]).__name__}")
    steps = record["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise StageError("'steps' must be a non-empty list of strings")
    if not isinstance(record["correct"], bool):
        raise StageError(f"'correct' must be true or false, got {record['correct']!r}")
    if not record["answer"].strip():
        raise StageError("'answer' (the reference answer) is empty")
    return steps, record["answer"]


def _read_cache(path: Path, initial_k: int) -> dict[str, tuple[str | None, _PassRate]]:
    """problem_id -> (the solution that computed it, MC(s_0) and its cost) from the cache file
    (the first entry of a problem counts; entries of older runs name no solution). A torn last
    line (no newline: a crash while appending) is cut off the file."""
    cached: dict[str, tuple[str | None, _PassRate]] = {}
    for number, line in enumerate(cut_torn_line(path).decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            problem_id, rollouts = entry["problem_id"], entry["rollouts"]
            cost = (int(entry.get("tokens", 0)), int(entry.get("requests", 0)))
            rate = _PassRate(float(entry["mc_initial"]), rollouts, *cost)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not an MC(s_0) cache entry ({error})") from None
        if rollouts != initial_k:
            raise ValueError(
                f"{path}:{number}: MC(s_0) from {rollouts} rollouts, but initial_k is {initial_k}"
            )
        cached.setdefault(problem_id, (entry.get("by"), rate))
    return cached


def _append_line(path: Path, line: str) -> None:
    """One write of a whole line (retried where the system writes part of it), so that
    concurrent appenders never interleave lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, (line + "\n").encode("utf-8"), path)
    finally:
        os.close(fd)
