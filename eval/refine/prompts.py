"""What the policy is sent in critique-refine (spec §7): its first conversation, the refine
conversation that quotes a rejected step with the verifier's critique, and its sampling."""

from __future__ import annotations

from collections.abc import Sequence

from genprm.backends import SamplingParams
from genprm.format import SYSTEM_POLICY

# §7: the policy's system prompt (Qwen2.5-Instruct's default; --system-prompt for another
# policy), what follows the problem in the user turn, and the refine request before the quoted
# step. Sampling: temperature 0.7, top_p 0.8, top_k 20.
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
USER_SUFFIX = "\n\n" + SYSTEM_POLICY
REFINE_REQUEST = (
    "There might be some problem in this paragraph of your reasoning, please rethink and refine "
    "your answer:\n"
)
QUOTE = ">"
TEMPERATURE, TOP_P, TOP_K = 0.7, 0.8, 20
MAX_TOKENS = 4096  # the policy's tokens per answer (upstream: 16384)


def policy_messages(problem: str, system: str | None = QWEN_SYSTEM) -> list[dict]:
    """The policy's first two messages (§7): system (none when ``system`` is empty or None:
    the chat template's own default applies) and the problem with the step-by-step request."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": problem + USER_SUFFIX}]


def refine_messages(
    problem: str,
    steps: Sequence[str],
    index: int,
    critique: str,
    system: str | None = QWEN_SYSTEM,
) -> list[dict]:
    """The refine conversation of §7: the policy's solution as its own turn, then step
    ``index`` (0-based) quoted with the verifier's ``critique``."""
    return policy_messages(problem, system) + [
        {"role": "assistant", "content": "\n\n".join(steps)},
        {"role": "user", "content": REFINE_REQUEST + QUOTE + steps[index] + "\n\n" + critique},
    ]


def extract_critique(turn: str) -> str:
    """The verifier's assistant turn after its first ``:``, stripped; the whole turn, stripped,
    when it has none. A turn that starts with ANALYZE_PREFIX has its first ``:`` at the end of
    the prefix, so its critique is the analysis onward (verify and output sections included).

    >>> extract_critique("<analyze>\\nLet's analyze the Paragraph 2 step by step: 2+2 is 5: no.\\n")
    '2+2 is 5: no.'
    >>> extract_critique("no colon here ")
    'no colon here'

    Upstream (``extract_after_first_colon``) stops at ``</analyze>``; the spec keeps the rest.
    """
    _, colon, rest = turn.partition(":")
    return (rest if colon else turn).strip()


def policy_params(max_tokens: int = MAX_TOKENS, seed: int | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, max_tokens=max_tokens, seed=seed
    )
