"""GenPRM as a reward for RL: ``genprm_reward``, a TRL reward function (``trl.reward_funcs:
[genprm_train.reward.genprm_reward]`` with ``rl: grpo``) over a GenPRM verifier served by
OpenAI-compatible servers, configured by the YAML's ``genprm_reward:`` block (GenPRMPlugin).

A completion's reward is its step rewards aggregated (last, min, mean or product; see
``genprm.aggregate``), plus ``outcome_weight`` when an ``answer_column`` is set and
math-verify (in the sandbox) finds its last ``\\boxed{}`` equal to that column's reference.
Steps are split as the policy writes them (``"Step k: ..."``, ``genprm.steps``); a completion
with no step, or whose steps do not fit the verifier's context, gets ``unscorable_reward`` as
its process part. A verifier that cannot be reached is an error after bounded retries, never a
reward.

>>> from genprm.testing import ScriptedEngine
>>> from genprm.verifier import GenPRMVerifier
>>> def judge(prompt, index):  # a verifier that rejects any step claiming 2+3 = 6
...     return "{No}$\\n</output>\\n" if "= 6" in prompt else "{Yes}$\\n</output>\\n"
>>> verifier = GenPRMVerifier(ScriptedEngine(judge), mode="direct")
>>> reward = ProcessReward(verifier, aggregation="min", unscorable_reward=-1.0)
>>> completions = ["2+3 = 5.\\nStep 2: So \\\\boxed{5}.", "2+3 = 6.\\nStep 2: So \\\\boxed{6}.", ""]
>>> [round(r, 3) for r in reward(["What is 2+3?"] * 3, completions)]
[0.994, 0.006, -1.0]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from genprm.aggregate import AGGREGATIONS, aggregate
from genprm.backends import Engine, EngineError, make_engine
from genprm.grading import extract_boxed
from genprm.policy import AnswerGrader
from genprm.steps import split_policy_steps
from genprm.verifier import CODE_MODES, GenPRMVerifier

from .args import GenPRMRewardArgs

LOG = logging.getLogger(__name__)
# What TRL passes a reward function besides the dataset's columns.
_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


class RewardServerError(RuntimeError):
    """The GenPRM verifier's servers did not answer within the configured retries."""


class ProcessReward:
    """One reward per completion from ``verifier`` (see the module docstring); a TRL reward
    function when called, ``ascore`` from asyncio code. ``grader`` grades final answers when
    ``answer_column`` is set. ``close()`` closes what :meth:`from_settings` started."""

    def __init__(
        self,
        verifier: GenPRMVerifier,
        aggregation: str = "min",
        problem_column: str = "problem",
        answer_column: str | None = None,
        outcome_weight: float = 1.0,
        unscorable_reward: float = 0.0,
        grader: AnswerGrader | None = None,
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if answer_column is not None and grader is None:
            raise ValueError("an answer_column needs a grader (AnswerGrader) for its outcome term")
        self.verifier, self.aggregation, self.grader = verifier, aggregation, grader
        self.problem_column, self.answer_column = problem_column, answer_column
        self.outcome_weight, self.unscorable_reward = outcome_weight, unscorable_reward
        self._owned: list = []

    @classmethod
    def from_settings(cls, settings: GenPRMRewardArgs) -> ProcessReward:
        """The reward the ``genprm_reward:`` YAML block describes: an ``openai`` engine on its
        servers (reachable, or RewardServerError after its retries) and, for a mode that
        executes code (``cot+code``, ``adaptive``) or an outcome term, a sandbox."""
        from genprm.sandbox import Sandbox

        engine = connect(settings)
        sandbox = None
        try:
            executes = settings.mode in CODE_MODES
            if executes or settings.answer_column is not None:
                sandbox = Sandbox(workers=settings.sandbox_workers)
            verifier = GenPRMVerifier(
                engine, sandbox if executes else None, maj=settings.maj, mode=settings.mode,
                ambiguity=settings.ambiguity, history=settings.history,
                prompt_style=settings.prompt_style, budget=settings.budget,
            )  # fmt: skip
            reward = cls(
                verifier, settings.aggregation, settings.problem_column, settings.answer_column,
                settings.outcome_weight, settings.unscorable_reward,
                AnswerGrader(sandbox) if settings.answer_column is not None else None,
            )  # fmt: skip
        except BaseException:
            for opened in (sandbox, engine):
                if opened is not None:
                    opened.close()
            raise
        reward._owned = [part for part in (sandbox, engine) if part is not None]
        return reward

    def close(self) -> None:
        for part in self._owned:
            part.close()
        self._owned = []

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """TRL's reward-function call: ``kwargs`` holds the dataset's other columns, one value
        per completion (and ``log_metric``, where TRL passes it)."""
        coroutine = self.ascore(prompts, completions, **kwargs)
        if not _loop_running():
            return asyncio.run(coroutine)
        with ThreadPoolExecutor(1) as thread:  # asyncio.run cannot nest in a running loop
            return thread.submit(asyncio.run, coroutine).result()

    async def ascore(self, prompts: list, completions: list, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        texts = [completion_text(c, i) for i, c in enumerate(completions)]
        problems = self._column(self.problem_column, kwargs, len(texts), required=False)
        if problems is None:
            problems = [prompt_problem(p, i) for i, p in enumerate(prompts)]
        steps = [split_policy_steps(text) for text in texts]
        scorable = [i for i, s in enumerate(steps) if s]
        scoring = self.verifier.ascore_many(
            [(problems[i], steps[i]) for i in scorable], stop_at_first_error=False
        )
        try:
            results, correct = await asyncio.gather(scoring, self._correct(texts, kwargs))
        except EngineError as error:
            raise RewardServerError(_server_advice(self.verifier.engine, error)) from error
        process = [self.unscorable_reward] * len(texts)
        unscored = len(texts) - len(scorable)
        for index, result in zip(scorable, results):
            if result.error is None:
                process[index] = aggregate(result.rewards, self.aggregation)
            else:
                unscored += 1
                LOG.warning("completion %d gets unscorable_reward: %s", index, result.error)
        rewards = [p + self.outcome_weight * c for p, c in zip(process, correct)]
        if callable(log_metric := kwargs.get("log_metric")):
            log_metric("genprm/process_reward", sum(process) / len(process))
            log_metric("genprm/unscored_share", unscored / len(texts))
            if self.answer_column is not None:
                log_metric("genprm/outcome_correct", sum(correct) / len(correct))
        return rewards

    async def _correct(self, texts: list[str], kwargs: dict) -> list[bool]:
        """Whether each final answer equals its reference (all False without a column)."""
        references = self._column(self.answer_column, kwargs, len(texts), required=True)
        if references is None:
            return [False] * len(texts)
        missing = [i for i, reference in enumerate(references) if reference is None]
        if missing:
            raise ValueError(f"completions {missing}: no reference in {self.answer_column!r}")
        grades = [
            self.grader.correct([extract_boxed(t)], str(r)) for t, r in zip(texts, references)
        ]
        return [grade[0] for grade in await asyncio.gather(*grades)]

    @staticmethod
    def _column(name: str | None, kwargs: dict, count: int, required: bool) -> list | None:
        if name is None or (name not in kwargs and not required):
            return None
        if name not in kwargs:
            columns = sorted(k for k in kwargs if k not in _TRL_KWARGS)
            raise KeyError(f"the dataset has no column {name!r} (columns: {', '.join(columns)})")
        values = list(kwargs[name])
        if len(values) != count:
            raise ValueError(f"column {name!r} has {len(values)} values for {count} completions")
        return values


def completion_text(completion, index: int = 0) -> str:
    """A completion's text: the string itself, or its assistant messages' contents joined.

    >>> completion_text([{"role": "assistant", "content": "Step 1: 5."}])
    'Step 1: 5.'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and all(isinstance(m, dict) for m in completion):
        contents = [m.get("content") for m in completion if m.get("role") == "assistant"]
        if all(isinstance(content, str) for content in contents):
            return "".join(contents)
    raise TypeError(f"completion {index}: neither a string nor a list of text messages")


def prompt_problem(prompt, index: int = 0) -> str:
    """The problem a prompt asks: its last user message, or the prompt string itself.

    >>> prompt_problem([{"role": "system", "content": "Reason."},
    ...                 {"role": "user", "content": "What is 2+3?"}])
    'What is 2+3?'
    """
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"prompt {index} has no user message with text")
    return users[-1]


def connect(settings: GenPRMRewardArgs) -> Engine:
    """The ``openai`` engine on ``settings.base_urls``; its health check is retried
    ``settings.retries`` times (the servers may still be starting), then RewardServerError."""
    for attempt in range(settings.retries + 1):
        try:
            return make_engine(
                "openai", base_urls=settings.base_urls, model=settings.model,
                tokenizer=settings.tokenizer, api_key_env=settings.api_key_env,
                max_concurrency=settings.max_concurrency, retries=settings.retries,
                backoff_s=settings.backoff_s, timeout_s=settings.timeout_s,
            )  # fmt: skip
        except EngineError as error:
            failure = error
            if attempt < settings.retries:
                time.sleep(settings.backoff_s * 2**attempt)
    raise RewardServerError(
        f"GenPRM reward: no verifier at {', '.join(settings.base_urls)} after "
        f"{settings.retries + 1} attempts ({failure}). Start the GenPRM server(s) there "
        "(e.g. `python -m vllm.entrypoints.openai.api_server --model GENPRM_CHECKPOINT`) or "
        "fix genprm_reward.base_urls."
    ) from failure


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _server_advice(engine: Engine, error: EngineError) -> str:
    urls = [server.base_url for server in getattr(engine, "servers", [])]
    return (
        f"GenPRM reward: the verifier at {', '.join(urls) or engine.name} failed ({error}). "
        "No reward is made up for it: check that the servers are up (GET <url>/models), or "
        "give slow servers more time with genprm_reward.timeout_s / genprm_reward.retries."
    )


# -- the TRL reward function ------------------------------------------------------------------

_configured: ProcessReward | None = None


def configure(settings: GenPRMRewardArgs | dict) -> ProcessReward:
    """Set up :func:`genprm_reward` (GenPRMPlugin does this from the YAML's ``genprm_reward:``
    block when training starts); replaces and closes an earlier set-up."""
    global _configured
    if isinstance(settings, dict):
        settings = GenPRMRewardArgs(**settings)
    reward = ProcessReward.from_settings(settings)
    close()
    _configured = reward
    return reward


def close() -> None:
    global _configured
    if _configured is not None:
        _configured.close()
        _configured = None


def genprm_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """The GenPRM reward of each completion (TRL's reward-function signature); configured by
    :func:`configure`."""
    if _configured is None:
        raise RuntimeError(
            "genprm_train.reward.genprm_reward is not configured: add `plugins: "
            "[genprm_train.GenPRMPlugin]` and a `genprm_reward:` block with `base_urls` to the "
            "axolotl YAML (outside axolotl: genprm_train.reward.configure(...))"
        )
    return _configured(prompts, completions, **kwargs)
