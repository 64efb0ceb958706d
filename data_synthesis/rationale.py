"""The ``rationale`` stage (spec §4): a strong model (QwQ-32B in the paper) verifies a solution
paragraph by paragraph, with python code that the sandbox runs, and then names the earliest
wrong paragraph; its ``### Paragraph k`` sections become the solution's GenPRM assistant turns.

For each solution: one code loop (:mod:`genprm.codeloop`, shared with the verifier; its blocks
run in one sandbox session) from the assistant prefix until ``</think>``; the text up to its last
``</verify>`` followed by upstream's final conclusion, which ends in ``\\boxed``;
``judge_samples`` completions of that in one request, each read as a paragraph index; the
majority of those indices is the judge's first error.

>>> judged_first_error([judge_vote(text) for text in ("{2", "{ 3", "{-1", "{3")], steps=3)
2
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from genprm.backends.types import ContextTooLong, Engine, Request, Sample, SamplingParams
from genprm.codeloop import CODE_BLOCK, CodeLoop, run_code_loop
from genprm.format import (
    FINAL_CONCLUSION,
    JUDGE_STOPS,
    RATIONALE_PARAGRAPH,
    RATIONALE_PREFIX,
    RATIONALE_TEMPLATE,
    SYSTEM_RATIONALE,
    THINK_END,
    VERIFY_END,
    FormatError,
    code_output_spans,
    parse_turn,
    render_rationale,
)
from genprm.steps import strip_step_prefix

from .stage import Stage, StageError, StageResult

_HEADING = re.compile(r"^### Paragraph (\d+)\b.*\n?", re.MULTILINE)
# What a judge sample writes after \boxed, its closing brace being the stop: "{3", "{ -1".
_VOTE = re.compile(r"\{?\s*([+-]?\d+)\s*")
_THINK_OPEN = RATIONALE_PREFIX[: RATIONALE_PREFIX.index("\n") + 1]
_VERIFY_CLOSE = VERIFY_END.rstrip("\n")


@dataclass(frozen=True)
class RationaleSettings:
    """How rationales are generated (spec §4 defaults)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None
    """Sent with every request: the same prompt then gives the same text (None: unseeded)."""
    max_tokens: int = 8192
    """Token budget of the whole assistant text: the prefix, everything generated and every
    spliced [Code Output] block (the prompt before it does not count). The spec states none; a
    strong model verifying a long solution needs thousands. Small models on CPU need little."""
    max_code_rounds: int = 64
    """Generation requests of the code loop at most; each ends at a closed code fence (then
    executed) or at ``</think>``."""
    judge_samples: int = 4
    """Completions of the final conclusion whose majority is the judge's first error."""
    judge_max_tokens: int = 16
    """Tokens per judge completion at most: an index and its brace."""
    template: str | None = None
    """A custom user turn (``str.format`` with ``{problem}`` and ``{solution_section}``);
    None for upstream's (``genprm.format.RATIONALE_TEMPLATE``)."""

    def __post_init__(self):
        for name in ("max_tokens", "max_code_rounds", "judge_samples", "judge_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.template is not None:
            try:
                self.template.format(problem="", solution_section="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    "template must be a str.format template with {problem} and "
                    f"{{solution_section}} only (literal braces doubled): {error!r}"
                ) from None


class RationaleStage(Stage):
    """Input records need ``id``, ``problem`` and ``steps`` (``"Step k: text"`` or bare
    paragraphs); every other key passes through. The output record adds ``rationale_text`` (the
    whole assistant text, final conclusion included), ``judge_votes`` (each judge sample's
    1-based index as written, None where none could be read), ``judge_first_error`` (0-based,
    -1 for none, None without a verdict), ``rationales`` (one assistant turn per step, without
    its output section; None where the section is missing or unusable), ``code_rounds`` (code
    blocks executed) and ``rationale_tokens`` (every generated token, judge samples included).
    """

    name = "rationale"
    needs = ("id", "problem", "steps")

    def __init__(self, engine: Engine, sandbox, settings: RationaleSettings | None = None):
        self.engine, self.sandbox = engine, sandbox
        self.config = settings or RationaleSettings()
        self.loop = CodeLoop(
            finish=(THINK_END,),
            max_rounds=self.config.max_code_rounds,
            budget=self.config.max_tokens,
            execute_any_chunk=False,
        )

    def settings(self) -> dict[str, Any]:
        return asdict(self.config)

    async def process(self, record: dict[str, Any]) -> StageResult:
        problem, steps = _problem_and_steps(record)
        context = self.context(problem, steps)
        async with self.sandbox.session() as session:
            outcome = await run_code_loop(
                self.loop,
                RATIONALE_PREFIX,
                self._params(),
                lambda text, params: self._first(context + text, params),
                self._count,
                session,
            )
        text = outcome.text + (outcome.final.text if outcome.final else "")
        tokens = outcome.tokens
        end = text.rfind(_VERIFY_CLOSE)
        votes: list[int | None] = []
        if end < 0:
            rationale_text, sections = text, text
        else:
            rationale_text = text[:end] + FINAL_CONCLUSION
            sections = text[:end] + VERIFY_END
            judge = replace(
                self._params(),
                n=self.config.judge_samples,
                max_tokens=self.config.judge_max_tokens,
                stop=JUDGE_STOPS,
                include_stop_str_in_output=False,
            )
            samples = await self._complete(context + rationale_text, judge)
            votes = [judge_vote(sample.text) for sample in samples]
            tokens += sum(len(sample.token_ids) for sample in samples)
        first_error = judged_first_error(votes, len(steps))
        rationales = paragraph_rationales(sections, len(steps))
        output = {
            **record,
            "rationale_text": rationale_text,
            "judge_votes": votes,
            "judge_first_error": first_error,
            "rationales": rationales,
            "code_rounds": len(outcome.executed),
            "rationale_tokens": tokens,
        }
        valid = [v for v in votes if _valid(v, len(steps))]
        stats = {
            "solutions": 1,
            "tokens": tokens,
            "code_rounds": len(outcome.executed),
            "judged": int(first_error is not None),
            "no_verdict": int(first_error is None),
            "no_verify": int(end < 0),
            "unfinished": int(outcome.final is None),
            "context_full": int(self._fit(self._encode(context + text), self._params()) is None),
            "invalid_votes": len(votes) - len(valid),
            "paragraphs": len(steps),
            "paragraphs_unparsed": rationales.count(None),
        }
        return StageResult([output], stats)

    def context(self, problem: str, steps: Sequence[str]) -> str:
        """The rendered system and user turns, before the assistant prefix."""
        section = "\n\n".join(
            RATIONALE_PARAGRAPH.format(k=k, text=strip_step_prefix(step))
            for k, step in enumerate(steps, start=1)
        )
        user = (self.config.template or RATIONALE_TEMPLATE).format(
            problem=problem, solution_section=section
        )
        messages = [
            {"role": "system", "content": SYSTEM_RATIONALE},
            {"role": "user", "content": user},
        ]
        rendered = self.engine.apply_chat_template(messages, add_generation_prompt=True)
        # Reasoning models' templates (QwQ-32B, DeepSeek-R1) open the think block themselves;
        # the assistant prefix opens it, once.
        return rendered.removesuffix(_THINK_OPEN)

    def _params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            top_k=self.config.top_k,
            max_tokens=self.config.max_tokens,
            include_stop_str_in_output=True,
            seed=self.config.seed,
        )

    async def _first(self, prompt: str, params: SamplingParams) -> Sample:
        return (await self._complete(prompt, params))[0]

    async def _complete(self, prompt: str, params: SamplingParams) -> list[Sample]:
        """The samples for ``prompt`` (sent as token ids), within the model's context. Without
        room left they are empty and cut by length, which ends the code loop."""
        ids = self._encode(prompt)
        fitted = self._fit(ids, params)
        if fitted is None:
            return [Sample("", [], "length")] * params.n
        return (await self.engine.agenerate(Request(ids, fitted))).samples

    def _fit(self, ids: list[int], params: SamplingParams) -> SamplingParams | None:
        """``params`` capped to the context ``ids`` leave (``Engine.fit_to_context``); None when
        they leave no room."""
        try:
            return self.engine.fit_to_context(ids, params)
        except ContextTooLong:
            return None

    def _encode(self, text: str) -> list[int]:
        """``text`` as token ids: the chat template already holds the special tokens."""
        return self.engine.tokenizer.encode(text, add_special_tokens=False)

    def _count(self, text: str) -> int:
        return len(self._encode(text))


def _problem_and_steps(record: dict[str, Any]) -> tuple[str, list[str]]:
    problem, steps = record["problem"], record["steps"]
    if not isinstance(problem, str) or not problem.strip():
        raise StageError(f"record {record['id']!r}: problem must be a non-empty string")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise StageError(f"record {record['id']!r}: steps must be a non-empty list of strings")
    return problem, steps


def judge_vote(text: str) -> int | None:
    """The index a judge sample wrote after ``\\boxed`` (up to its brace, the stop), or None.

    >>> judge_vote("{3"), judge_vote("{ -1 "), judge_vote("7"), judge_vote("{2.5"), judge_vote("")
    (3, -1, 7, None, None)
    """
    match = _VOTE.fullmatch(text)
    return int(match[1]) if match else None


def _valid(vote: int | None, steps: int) -> bool:
    return vote == -1 or (vote is not None and 1 <= vote <= steps)


def judged_first_error(votes: Sequence[int | None], steps: int) -> int | None:
    """The 0-based first wrong paragraph (-1 for none) by majority of the 1-based ``votes``;
    None when no vote is -1 or a paragraph of the ``steps``. A tie goes to the earliest
    paragraph; -1 ("not found") counts as later than every paragraph.

    >>> judged_first_error([3, 2, 3, 2], steps=4), judged_first_error([-1, -1, 4, 4], steps=4)
    (1, 3)
    >>> judged_first_error([-1, None, 9, 0], steps=4), judged_first_error([None, 5], steps=4)
    (-1, None)
    """
    counts = Counter(vote for vote in votes if _valid(vote, steps))
    if not counts:
        return None
    best = min(counts, key=lambda vote: (-counts[vote], vote if vote > 0 else steps + 1))
    return best - 1 if best > 0 else -1


def paragraph_rationales(text: str, steps: int) -> list[str | None]:
    """One GenPRM assistant turn (no output section) for each paragraph 1..``steps``, from the
    ``### Paragraph k`` sections of ``text`` (the first section of a number counts; a heading
    inside code or its output is none). None for a section that is missing, lacks a closed
    ``<analyze>`` or ``<verify>``, or that ``render_rationale`` refuses."""
    inside = [match.span() for match in CODE_BLOCK.finditer(text)] + code_output_spans(text)
    headings = [
        match
        for match in _HEADING.finditer(text)
        if not any(start <= match.start() < end for start, end in inside)
    ]
    sections: dict[int, str] = {}
    for heading, following in zip(headings, [*headings[1:], None]):
        end = following.start() if following else len(text)
        sections.setdefault(int(heading[1]), text[heading.end() : end])
    return [_rationale(k, sections.get(k)) for k in range(1, steps + 1)]


def _rationale(step: int, section: str | None) -> str | None:
    if section is None:
        return None
    turn = parse_turn(section)
    if turn.analysis is None or turn.verify is None:
        return None
    try:
        return render_rationale(step, turn.analysis.strip(), turn.verify, None)
    except FormatError:
        return None
