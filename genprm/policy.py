"""The policy's side of every stage that samples solutions (synthesis's solve and rollout, Best-of-N,
refine, search): its prompt (spec §5) and the grading of its final answers against the
reference."""

from __future__ import annotations

import asyncio

from .backends.types import Engine, Request, SamplingParams
from .format import SYSTEM_POLICY
from .grading import DEFAULT_TIMEOUT_S, agrade_answers
from .sandbox import Sandbox

FIRST_STEP = "Step 1: "


def policy_context(tokenizer, problem: str) -> str:
    """The chat template's rendering of [system SYSTEM_POLICY, user problem] with the generation
    prompt: the text before the assistant's answer."""
    messages = [{"role": "system", "content": SYSTEM_POLICY}, {"role": "user", "content": problem}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def policy_request(engine: Engine, text: str, params: SamplingParams) -> Request:
    """``text`` as token ids (the template already holds the special tokens), ``max_tokens``
    capped to the context the prompt leaves; ContextTooLong when the prompt alone does not fit."""
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    return Request(prompt, engine.fit_to_context(prompt, params))


class AnswerGrader:
    """Whether final answers equal a reference (math-verify in the sandbox). Each distinct
    (answer, reference) pair is graded once; concurrent askers of a pair share its grading."""

    def __init__(self, sandbox: Sandbox, timeout: float = DEFAULT_TIMEOUT_S):
        self.sandbox, self.timeout = sandbox, timeout
        self._known: dict[tuple[str | None, str], bool] = {}
        self._pending: dict[tuple[str | None, str], asyncio.Future] = {}

    async def correct(self, answers: list[str | None], reference: str) -> list[bool]:
        keys = [(answer, reference) for answer in answers]
        for key in dict.fromkeys(keys):
            if key not in self._known and key not in self._pending:
                self._pending[key] = asyncio.ensure_future(self._grade(key))
        await asyncio.gather(*(self._pending[key] for key in keys if key in self._pending))
        return [self._known[key] for key in keys]

    async def _grade(self, key: tuple[str | None, str]) -> None:
        try:
            [grade] = await agrade_answers([key], self.sandbox, self.timeout)
            self._known[key] = grade.equal
        finally:
            del self._pending[key]
