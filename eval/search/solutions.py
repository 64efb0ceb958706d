"""One problem's search (:func:`eval.search.tree.search`) with a real policy and verifier.

The policy writes in the solve stage's ``"Step k:"`` form (spec §5): the prompt is the policy
context, the steps so far joined by blank lines, and the next step's header (the rollout
prefix); one request per parent with ``n`` = its children, so they share the prefix. A step
ends where the policy starts a line with ``"Step "`` (one stop string: OpenAI-compatible servers
take at most 4, too few for :func:`genprm.steps.split_policy_steps`'s ``"\\nStep <digit>"``, and
a line ``"Step by step..."`` rarely starts a step's own text), at the end of the sequence or at
``max_tokens``; a step cut at ``max_tokens`` is kept as it is and the solution goes on. The step
text is normalised as split_policy_steps does, so that splitting a candidate's ``text`` gives its
``steps`` back.

A candidate is finished when its step holds a ``\\boxed{}`` answer (``"answer"``), when the
policy ended the sequence (``"end"``), when it wrote nothing before the next header (``"empty"``:
no new step, it keeps its parent's value), or when a prompt no longer fits the policy's or the
verifier's context (``"context"``); one still open at the step limit is ``"step_limit"``. The
verifier scores each new step once (:meth:`GenPRMVerifier.ascore_next`), continuing its parent's
verifier state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from genprm.backends.types import ContextTooLong, Engine, Sample, SamplingParams
from genprm.grading import extract_boxed
from genprm.policy import policy_context, policy_request
from genprm.steps import strip_step_prefix
from genprm.verifier import GenPRMVerifier, VerifierState

from .tree import Final, search

STEP_MARKER = "\nStep "  # where the policy starts its next step


@dataclass
class Partial:
    """A partial (or finished) solution: its steps, their rewards, the verifier's state after
    them and the policy tokens generated along its path."""

    steps: tuple[str, ...] = ()
    rewards: tuple[float, ...] = ()
    state: VerifierState | None = None
    tokens: int = 0
    parent: Partial | None = None
    finished: bool = False
    finish: str | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(self.steps)


def prompt_tail(steps: tuple[str, ...]) -> str:
    """What follows the policy context in the prompt of the step after ``steps``.

    >>> prompt_tail(()), prompt_tail(("Step 1: a", "Step 2: b"))
    ('Step 1: ', 'Step 1: a\\n\\nStep 2: b\\n\\nStep 3: ')
    """
    return "".join(f"{step}\n\n" for step in steps) + f"Step {len(steps) + 1}: "


def step_text(number: int, generated: str) -> str | None:
    """The normalised step ``number`` from the text generated after its header; None when
    it is empty.

    >>> step_text(2, " x = 3.\\n"), step_text(2, "Step 2: x = 3."), step_text(3, "  ")
    ('Step 2: x = 3.', 'Step 2: x = 3.', None)
    """
    content = strip_step_prefix(generated.strip()).strip()
    return f"Step {number}: {content}" if content else None


class ProblemSearch:
    """The search of one problem: :meth:`expand` and :meth:`value` for the search core, and
    the tokens the policy and the verifier generated for it (every candidate, pruned ones
    too)."""

    def __init__(
        self, problem: str, policy: Engine, verifier: GenPRMVerifier, params: SamplingParams
    ):
        self.problem, self.policy, self.verifier = problem, policy, verifier
        self.params = replace(params, stop=(STEP_MARKER,), include_stop_str_in_output=False)
        self.context = policy_context(policy.tokenizer, problem)
        self.policy_tokens = self.verifier_tokens = 0

    async def run(self, method: str, n: int, width: int, max_steps: int) -> list[Final[Partial]]:
        root = Partial(state=self.verifier.start())
        return await search(
            root, self.expand, self.value, method=method, n=n, width=width, max_steps=max_steps
        )

    async def expand(self, parents: list[Partial], width: int) -> list[list[Partial]]:
        return list(await asyncio.gather(*(self._children(parent, width) for parent in parents)))

    async def _children(self, parent: Partial, width: int) -> list[Partial]:
        text = self.context + prompt_tail(parent.steps)
        try:
            request = policy_request(self.policy, text, replace(self.params, n=width))
        except ContextTooLong:
            parent.finish = "context"
            return []
        completion = await self.policy.agenerate(request)
        return [self._child(parent, sample) for sample in completion.samples]

    def _child(self, parent: Partial, sample: Sample) -> Partial:
        self.policy_tokens += len(sample.token_ids)
        child = Partial(
            parent.steps, parent.rewards, parent.state, parent.tokens + len(sample.token_ids),
            parent,
        )  # fmt: skip
        step = step_text(len(parent.steps) + 1, sample.text)
        if step is None:
            child.finished, child.finish = True, "empty"
            return child
        child.steps += (step,)
        if extract_boxed(step) is not None:
            child.finished, child.finish = True, "answer"
        elif sample.finish_reason == "stop" and sample.stop_reason != STEP_MARKER:
            child.finished, child.finish = True, "end"
        return child

    async def value(self, candidates: list[Partial]) -> list[float]:
        return list(await asyncio.gather(*(self._value(candidate) for candidate in candidates)))

    async def _value(self, candidate: Partial) -> float:
        parent = candidate.parent
        if len(candidate.steps) == len(parent.steps):  # no new step
            return parent.rewards[-1] if parent.rewards else 0.0
        try:
            reward, state = await self.verifier.ascore_next(
                self.problem, candidate.steps, parent.state
            )
        except ContextTooLong as error:
            candidate.finished, candidate.finish = True, "context"
            candidate.error = str(error)
            return 0.0
        self.verifier_tokens += state.tokens - parent.state.tokens
        candidate.state, candidate.rewards = state, parent.rewards + (reward,)
        return reward


def sample_record(problem: dict, index: int, final: Final[Partial]) -> dict:
    """A pool candidate as a Best-of-N sample line (see :mod:`eval.bon.samples`; not graded
    yet), with its ``subtree``, why it ended (``finish``) and, where the verifier could not
    score its last step, ``score_error``."""
    candidate = final.candidate
    record = {
        "id": f"{problem['id']}-{index}",
        "problem_id": problem["id"],
        "index": index,
        "problem": problem["problem"],
        "answer": problem["answer"],
        "text": candidate.text,
        "steps": list(candidate.steps),
        "final_answer": extract_boxed(candidate.text),
        "correct": None,
        "tokens": candidate.tokens,
        "step_rewards": list(candidate.rewards),
        "subtree": final.subtree,
        "finish": candidate.finish or "step_limit",
    }
    if candidate.error:
        record["score_error"] = candidate.error
    return record
