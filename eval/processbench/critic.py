r"""ProcessBench with a critic LLM: the official critique prompt, and the earliest wrong paragraph
read from the last ``\boxed{...}`` of the critique (greedy, or a majority over samples).

The prompt reproduces Qwen's ProcessBench code: the solution steps become paragraphs tagged
``<paragraph_i>`` (from 0) inside the official template, sent as one user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from genprm.backends import Engine, Request, SamplingParams
from genprm.grading import extract_boxed

CRITIC_TEMPLATE = r"""The following is a math problem and a solution (split into paragraphs, enclosed with tags and indexed from 0):

[Math Problem]

{problem}

[Solution]

{tagged_response}

Your task is to review and critique the solution paragraph by paragraph. Once you identify an error in a paragraph, return the index of the paragraph where the earliest error occurs. Otherwise, return the index of -1 (which typically denotes "not found").

Please put your final answer (i.e., the index) in \boxed{{}}."""  # noqa: E501 - verbatim
"""The official critique template (``{{}}`` is a literal ``{}`` once formatted)."""

MAX_TOKENS = 4096
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
MAJORITY = SamplingParams(n=8, temperature=1.0, top_p=0.9, max_tokens=MAX_TOKENS)
"""The protocol's Maj@8 sampling; ``critic_verdict`` replaces ``n`` with its ``samples``."""

# ASCII digits only: str.isdigit and \d would also take other scripts' digits.
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class CriticVerdict:
    prediction: int | None
    """The earliest wrong paragraph (-1: none); None when no sample gave a valid index."""
    samples: list[str]
    """The critiques, in sample order."""
    votes: dict[int, int]
    """Valid index -> samples naming it, in order of first appearance."""


def critic_prompt(problem: str, steps: list[str]) -> str:
    """The user message: ``steps`` as tagged paragraphs in the official template.

    >>> prompt = critic_prompt("1+1?", ["1+1=2.", "So 2."])
    >>> print(prompt.split("[Solution]\\n\\n")[1].split("\\n\\nYour task")[0])
    <paragraph_0>
    1+1=2.
    </paragraph_0>
    <BLANKLINE>
    <paragraph_1>
    So 2.
    </paragraph_1>
    """
    tagged = "\n\n".join(
        f"<paragraph_{i}>\n{step}\n</paragraph_{i}>" for i, step in enumerate(steps)
    )
    return CRITIC_TEMPLATE.format(problem=problem, tagged_response=tagged)


def parse_index(text: str) -> int | None:
    r"""The integer in the last ``\boxed{...}`` of ``text``; None when there is none, the last
    box is not closed, or its content (spaces aside) is not a bare integer.

    As in the official scoring (``int()`` of the box content), ``\boxed{\text{-1}}`` and
    ``\boxed{-1.}`` are not integers: the model was asked for the index alone.

    >>> parse_index(r"Paragraph 1 is fine (\boxed{1} was a guess)... so \boxed{ -1 }.")
    -1
    >>> parse_index(r"\boxed{\text{2}}") is None, parse_index("no box") is None
    (True, True)
    """
    content = extract_boxed(text)
    if content is None or not _INTEGER.fullmatch(content):
        return None
    return int(content)


def critic_request(
    engine: Engine, problem: str, steps: list[str], samples: int = 1, max_tokens: int = MAX_TOKENS
) -> Request:
    """The chat-rendered prompt with greedy decoding (``samples == 1``) or the majority sampling
    with ``n=samples``."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    messages = [{"role": "user", "content": critic_prompt(problem, steps)}]
    prompt = engine.apply_chat_template(messages, add_generation_prompt=True)
    if samples == 1:
        params = replace(GREEDY, max_tokens=max_tokens)
    else:
        params = replace(MAJORITY, n=samples, max_tokens=max_tokens)
    return Request(prompt, params)


def tally(texts: list[str], num_steps: int) -> CriticVerdict:
    r"""The majority of the valid indices named by ``texts``.

    An index outside -1..num_steps-1 counts as unparsable; unparsable samples do not vote. A tie
    goes to the index that appears first among the samples (a fixed, data-independent rule).

    >>> verdict = tally([r"\boxed{1}", r"\boxed{0}", r"\boxed{7}", "?", r"\boxed{0}"], 3)
    >>> verdict.votes, verdict.prediction
    ({1: 1, 0: 2}, 0)
    >>> tally([r"\boxed{1}", r"\boxed{0}", r"\boxed{0}", r"\boxed{1}"], 3).prediction
    1
    """
    votes: dict[int, int] = {}
    for text in texts:
        index = parse_index(text)
        if index is not None and -1 <= index < num_steps:
            votes[index] = votes.get(index, 0) + 1
    # max keeps the first of equal counts, and dicts keep first-appearance order.
    prediction = max(votes, key=votes.__getitem__) if votes else None
    return CriticVerdict(prediction, list(texts), votes)


async def critic_verdict(
    engine: Engine, problem: str, steps: list[str], samples: int = 1, max_tokens: int = MAX_TOKENS
) -> CriticVerdict:
    """The critic's prediction for one solution: greedy for ``samples == 1``, else the majority
    of ``samples`` critiques drawn in one request (see :func:`tally`)."""
    request = critic_request(engine, problem, steps, samples, max_tokens)
    completion = await engine.agenerate(request)
    return tally([sample.text for sample in completion.samples], len(steps))
