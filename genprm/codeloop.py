"""The generate / execute / splice loop that the verifier (spec §3) and the rationale writer
(spec §4) share: the model writes until a code fence closes, the sandbox runs the last python
block of the text, its ``[Code Output]`` goes back into the text, and the model goes on, until
it writes a finishing mark or the rounds or the token budget run out. The blocks run in one
sandbox session (``Sandbox.session()``): one live namespace per path, as upstream's in-process
executor kept, so a block sees what the earlier ones defined and nothing runs twice.

The two callers differ only in the settings of :class:`CodeLoop`:

- the verifier stops at ``"\\n```\\n"`` or ``"</output>\\n"``, runs at most 3 rounds within
  2048 assistant tokens, and executes after *any* chunk that did not finish the turn (a fence,
  the end of the sequence or the length limit), as upstream did;
- the rationale writer stops at ``"\\n```\\n"`` or ``"</think>"``, runs up to 64 rounds, and
  stops when a chunk ends any other way than at a fence.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from .backends.types import Sample, SamplingParams
from .format import CODE_CLOSE, CODE_NOT_FOUND, code_output_text

# Upstream's code extraction: the last python block of the text, stripped.
CODE_BLOCK = re.compile(r"```python\s*(.*?)\s*```", re.DOTALL)


@dataclass(frozen=True)
class CodeLoop:
    """How one loop runs.

    ``finish``: a chunk ending in one of these ends the loop (it is also a generation stop).
    ``max_rounds``: generation requests at most. ``budget``: tokens of the whole text (the
    assistant text, the one the loop starts with included; the prompt before it not).
    ``execute_any_chunk``: execute after every chunk that did not finish (the verifier), or
    only after one that closed a code fence (the rationale writer; any other chunk ends it).
    """

    finish: tuple[str, ...]
    max_rounds: int
    budget: int
    execute_any_chunk: bool

    @property
    def stops(self) -> tuple[str, ...]:
        return (CODE_CLOSE, *self.finish)


@dataclass
class LoopOutcome:
    """``text``: the text with every executed round spliced in, before ``final``.
    ``final``: the chunk that ended in a finishing mark, None when the loop ran out (rounds,
    budget, or a chunk that ended the loop without one). ``executed``: the code blocks run, in
    order. ``rounds``: generation requests made; ``tokens``: tokens they generated."""

    text: str
    final: Sample | None
    executed: list[str] = field(default_factory=list)
    rounds: int = 0
    tokens: int = 0


Generate = Callable[[str, SamplingParams], Awaitable[Sample]]


async def run_code_loop(
    loop: CodeLoop,
    text: str,
    params: SamplingParams,
    generate: Generate,
    count: Callable[[str], int],
    session,
) -> LoopOutcome:
    """Run ``loop`` from ``text``. ``generate(text, params)`` continues the text;
    ``count(text)`` counts its tokens; each executed block runs in ``session`` (a
    :class:`genprm.sandbox.Session`: the path's namespace, with whatever ran in it before)."""
    outcome = LoopOutcome(text, None)
    for _ in range(loop.max_rounds):
        remaining = loop.budget - count(outcome.text)
        if remaining <= 0:
            break
        chunk = await generate(outcome.text, replace(params, max_tokens=remaining, stop=loop.stops))
        outcome.rounds += 1
        outcome.tokens += len(chunk.token_ids)
        if chunk.text.endswith(loop.finish):
            outcome.final = chunk
            return outcome
        outcome.text += chunk.text
        if not (loop.execute_any_chunk or chunk.text.endswith(CODE_CLOSE)):
            break
        blocks = CODE_BLOCK.findall(outcome.text)
        if blocks:
            code = blocks[-1].strip()
            result = await session.arun(code)
            outcome.executed.append(code)
            feedback = result.feedback
        else:
            feedback = CODE_NOT_FOUND
        outcome.text += code_output_text(feedback)
    return outcome
