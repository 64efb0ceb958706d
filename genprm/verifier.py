"""The GenPRM verifier (spec §3): a reward per solution step from a generative PRM, with the
Python it writes executed in the sandbox and Maj@N, batched.

>>> from genprm.sandbox import Sandbox
>>> from genprm.verifier import GenPRMVerifier
>>> # verifier = GenPRMVerifier(engine, Sandbox(), maj=8)
>>> # verifier.score(problem, steps).rewards     # one reward in [0, 1] per step
>>> # reward, state = await verifier.ascore_next(problem, steps[:1], verifier.start())

Every solution is a coroutine, and so is every sample path within it: step t of every solution
and every Maj@N sample is in flight at once (over ``engine.agenerate`` and the sandbox),
samples that share a prompt go as one request with ``n`` of them, and a shared history keeps one
prefix per step for the engine's prefix cache. Upstream scored one solution per process, one
step and one sample at a time.

The code of a path runs in one sandbox session across its steps (``Sandbox.session()``: one live
namespace, as upstream kept one per solution; spec §3), which the state after a step hands to
the one continuation that takes it; another continuation of the same state, or a sample of a
shared history, gets one rebuilt from the blocks that succeeded on the path. A solution's
sessions are closed when its scoring ends.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .backends.types import ContextTooLong, Engine, Prompt, Request, Sample, SamplingParams
from .codeloop import CodeLoop, run_code_loop
from .format import (
    ANALYZE_END,
    ANALYZE_PREFIX,
    NO,
    OUTPUT_END,
    OUTPUT_PREFIX,
    SYSTEM_COT,
    SYSTEM_DIRECT,
    VERIFY_PREFIX,
    YES,
    first_user_content,
)

MODES = ("cot+code", "cot", "direct", "adaptive")
CODE_MODES = ("cot+code", "adaptive")  # the modes that execute the model's code (a sandbox)
# Adaptive mode's levels, cheapest first (upstream's dev branch, processbench_adaptive.py).
ADAPTIVE_LEVELS = ("direct", "cot", "cot+code")
AMBIGUITY = 0.1  # upstream's tau: a reward within this of 0 or 1 decides the step
HISTORIES = ("independent", "shared")
DEFAULT_HISTORY = "independent"  # the paper's Maj@N (spec §3 item 5)
PROMPT_STYLES = ("train", "upstream")
# Sampling everywhere (spec §3): upstream's settings; repetition_penalty 1.0 is the default.
TEMPERATURE, TOP_P, TOP_K, LOGPROBS = 0.6, 0.95, 20, 20
BUDGET = 2048  # assistant tokens per turn (the prompt does not count)
MAX_VERIFY_ROUNDS = 3  # upstream's time_limit: every verify request counts
# What the fallback may generate after OUTPUT_PREFIX; direct mode gets the rest of the budget.
JUDGEMENT_TOKENS = 20
WRONG_BELOW = 0.5  # a step whose reward is below this is wrong; fixed, never tuned
# A judgement in the output section: \boxed{Yes}, also \boxed{\text{No}} and any case.
_JUDGEMENT = re.compile(r"\\boxed\{\s*(?:\\(?:text|textbf|mathrm)\{\s*)?(yes|no)\b", re.IGNORECASE)
# Stands for the assistant content when the training rendering is cut before it.
_PLACEHOLDER = "GENPRM-ASSISTANT-CONTENT-8f3c"


@dataclass(frozen=True)
class VerifierResult:
    """One solution's scores. ``prediction``: the first step whose reward is below 0.5, -1 when
    there is none, None when the solution could not be scored (``error`` says why)."""

    rewards: list[float]
    prediction: int | None
    turns: list[str]
    """The history's assistant turns (sample path 0), one per scored step."""
    error: str | None = None
    levels: list[str] | None = None
    """Adaptive mode: the level that decided each scored step; None in the other modes."""


class _PathCode:
    """What a turn that executed code leaves its path: the blocks it ran that succeeded (after
    the earlier turns' ones, what a session rebuilt for the path replays) and the path's live
    session, for the one continuation of the state that takes it (a state may be continued
    more than once: the others rebuild theirs)."""

    def __init__(self, succeeded: tuple[str, ...], session):
        self.succeeded = succeeded
        self._session = session

    def take(self):
        """The live session, once; None after."""
        session, self._session = self._session, None
        return session

    async def aclose(self) -> None:
        if (session := self.take()) is not None:
            await session.aclose()


@dataclass(frozen=True)
class _Turn:
    """One sampled assistant turn: its text, reward, what its executed code leaves the path
    (None where it ran none) and the tokens its requests generated."""

    text: str
    reward: float
    code: _PathCode | None = field(default=None, compare=False, repr=False)
    tokens: int = 0
    level: str | None = None
    """Adaptive mode: the level that decided the step (``tokens`` counts every level's)."""


@dataclass(frozen=True)
class VerifierState:
    """What scoring the next step of a solution needs: each sample path's turns for the steps
    scored so far (one path when the history is shared), and the tokens the verifier generated
    for them. Immutable: solutions that share a prefix share its state."""

    histories: tuple[tuple[_Turn, ...], ...]
    tokens: int = 0

    @property
    def turns(self) -> list[str]:
        """The history's assistant turns (sample path 0), one per scored step."""
        return [turn.text for turn in self.histories[0]]

    async def aclose(self) -> None:
        """Close the live sandbox sessions this state holds for its paths (a continuation of
        it rebuilds its own then); a state dropped unclosed has them closed soon after."""
        for history in self.histories:
            for turn in history:
                if turn.code is not None:
                    await turn.code.aclose()


class GenPRMVerifier:
    """Scores solutions step by step with a GenPRM checkpoint behind any genprm engine.

    ``mode``: ``"cot+code"`` (analyze, verify with executed code, judge), ``"cot"`` (analyze,
    judge), ``"direct"`` (judge only, SYSTEM_DIRECT) or ``"adaptive"`` (the cheapest of those
    that decides the step, below). ``history``: each Maj@N path of step t continues its own
    ``"independent"`` history (the default: the paper's Maj@N, N independent verification
    runs), or every path continues path 0's ``"shared"`` one (upstream's later dev branch: the
    N samples of a step go as one request with ``n`` = N, cheaper with prefix caching).
    ``prompt_style``: ``"train"`` (the text training puts before an assistant turn, sent as
    token ids) or ``"upstream"`` (the released code's rendering, sent as text: no assistant
    tag, and the engine adds a second BOS), for released checkpoints. ``concurrency`` bounds
    the solutions in flight. ``seed`` goes with every request: the same prompts then give the
    same samples, however they are batched (benchmarks compare runs).

    Adaptive mode (upstream's dev branch, ``processbench_adaptive.py``): a step is judged
    ``direct`` first, and judged again from scratch at ``cot``, then at ``cot+code``, while its
    reward r is ambiguous (``ambiguity <= r <= 1 - ambiguity``: decided only closer than
    ``ambiguity`` to 0 or 1). The step's reward and turns are the deciding level's, and so is
    the turn the next step's history continues. Every level renders SYSTEM_COT, as the dev
    branch does (its direct level too). With Maj@N the decision is per step, on the step's
    reward (the mean of its N paths), and all N paths go up a level together: that mean is what
    judges the step, and the step's turns then come from one level (the dev branch looked at
    sample 0's reward alone; the same for N = 1). A step's tokens count every level it took.
    """

    def __init__(
        self,
        engine: Engine,
        sandbox=None,
        maj: int = 1,
        mode: str = "cot+code",
        ambiguity: float = AMBIGUITY,
        history: str = DEFAULT_HISTORY,
        prompt_style: str = "train",
        budget: int = BUDGET,
        concurrency: int = 64,
        seed: int | None = None,
    ):
        for name, value, allowed in (
            ("mode", mode, MODES),
            ("history", history, HISTORIES),
            ("prompt_style", prompt_style, PROMPT_STYLES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if maj < 1 or budget < 1 or concurrency < 1:
            raise ValueError("maj, budget and concurrency must be at least 1")
        if not 0 <= ambiguity <= 0.5:
            raise ValueError(f"ambiguity must be between 0 and 0.5, not {ambiguity!r}")
        if mode in CODE_MODES and sandbox is None:
            raise ValueError(f'mode "{mode}" executes code: pass a genprm.sandbox.Sandbox')
        self.engine, self.sandbox = engine, sandbox
        self.maj, self.mode, self.history, self.prompt_style = maj, mode, history, prompt_style
        self.ambiguity, self.budget = ambiguity, budget
        self.concurrency, self.seed = concurrency, seed
        self.tokenizer = engine.tokenizer
        self._verify_loop = CodeLoop(
            finish=(OUTPUT_END,),
            max_rounds=MAX_VERIFY_ROUNDS,
            budget=budget,
            execute_any_chunk=True,
        )
        self._yes, self._no = self._first_tokens(YES), self._first_tokens(NO)
        if self._yes & self._no:
            raise ValueError("the tokenizer starts a Yes and a No judgement with the same token")
        # Upstream asks for the budget less the prefix (2039 of 2048 tokens with Qwen's).
        direct = budget - self._count(OUTPUT_PREFIX)
        self._direct_tokens = direct if direct > 0 else JUDGEMENT_TOKENS

    # -- public API ----------------------------------------------------------------------

    def score(self, problem: str, steps: Sequence[str]) -> VerifierResult:
        """Every step of one solution."""
        return self.score_many([(problem, steps)], stop_at_first_error=False)[0]

    def score_many(
        self, items, stop_at_first_error: bool = True, on_result: Callable | None = None
    ) -> list[VerifierResult]:
        """``(problem, steps)`` pairs, all in flight at once; results in order. With
        ``stop_at_first_error`` (ProcessBench) the steps after the first wrong one are not
        scored. ``on_result(index, result)`` is called as each solution finishes. From inside
        a running event loop, await :meth:`ascore_many` instead."""
        return asyncio.run(self.ascore_many(items, stop_at_first_error, on_result))

    async def ascore_many(
        self, items, stop_at_first_error: bool = True, on_result: Callable | None = None
    ) -> list[VerifierResult]:
        bound = asyncio.Semaphore(self.concurrency)

        async def one(index: int, problem: str, steps: Sequence[str]) -> VerifierResult:
            async with bound:
                result = await self.ascore(problem, steps, stop_at_first_error)
            if on_result is not None:
                on_result(index, result)
            return result

        return list(await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(items))))

    async def ascore(
        self, problem: str, steps: Sequence[str], stop_at_first_error: bool = False
    ) -> VerifierResult:
        steps = list(steps)
        if not steps:
            raise ValueError("a solution needs at least one step")
        state = self.start()
        rewards: list[float] = []
        try:
            for t in range(1, len(steps) + 1):
                try:
                    reward, state = await self.ascore_next(problem, steps[:t], state)
                except ContextTooLong as error:
                    return VerifierResult(
                        rewards, None, state.turns, str(error), self._levels(state)
                    )
                rewards.append(reward)
                if stop_at_first_error and reward < WRONG_BELOW:
                    break
        finally:
            await state.aclose()  # the solution's sandbox sessions
        return VerifierResult(rewards, first_wrong(rewards), state.turns, None, self._levels(state))

    def _levels(self, state: VerifierState) -> list[str] | None:
        if self.mode != "adaptive":
            return None
        return [turn.level for turn in state.histories[0]]

    def start(self) -> VerifierState:
        """The state before the first step: no turns yet."""
        paths = self.maj if self.history == "independent" else 1
        return VerifierState(((),) * paths)

    async def ascore_next(
        self, problem: str, steps: Sequence[str], state: VerifierState
    ) -> tuple[float, VerifierState]:
        """The reward of the newest of ``steps`` (the mean of its Maj@N samples) and the state
        after it, given ``state``, the one after ``steps[:-1]`` (``start()`` for the first
        step): a search scores each new step once, without rescoring the prefix.
        ContextTooLong when a prompt does not fit."""
        steps = list(steps)
        if len(state.histories[0]) != len(steps) - 1:
            raise ValueError(
                f"the state holds {len(state.histories[0])} steps' turns: it is not the state "
                f"before step {len(steps)}"
            )
        turns = await self._step(problem, steps, len(steps), state.histories)
        reward = sum(turn.reward for turn in turns) / len(turns)
        histories = tuple((*history, turns[index]) for index, history in enumerate(state.histories))
        for turn in turns[len(histories) :]:  # samples of a shared history that it does not keep
            if turn.code is not None:
                await turn.code.aclose()
        tokens = state.tokens + sum(turn.tokens for turn in turns)
        return reward, VerifierState(histories, tokens)

    # -- one step ------------------------------------------------------------------------

    async def _step(
        self, problem, steps, t: int, histories: Sequence[Sequence[_Turn]]
    ) -> list[_Turn]:
        """The ``maj`` sampled turns for step ``t`` (1-based); path i continues history i (all
        of them history 0 when it is shared). Adaptive: the deciding level's turns, each with
        the tokens of every level its path took."""
        contexts = [self._context(problem, steps, t, history) for history in histories]
        path_context = [contexts[i if len(contexts) > 1 else 0] for i in range(self.maj)]
        path_history = [histories[i if len(histories) > 1 else 0] for i in range(self.maj)]
        if self.mode != "adaptive":
            return await self._sampled(self.mode, path_context, path_history, t)
        spent = [0] * self.maj
        for level in ADAPTIVE_LEVELS:
            turns = await self._sampled(level, path_context, path_history, t)
            spent = [before + turn.tokens for before, turn in zip(spent, turns)]
            reward = sum(turn.reward for turn in turns) / len(turns)
            if not self.ambiguity <= reward <= 1 - self.ambiguity:
                break
        return [replace(turn, tokens=s, level=level) for turn, s in zip(turns, spent)]

    async def _sampled(
        self, mode: str, path_context: list[str], path_history: list[Sequence[_Turn]], t: int
    ) -> list[_Turn]:
        """One turn per path for step ``t``, judged in ``mode`` (not adaptive)."""
        start = OUTPUT_PREFIX if mode == "direct" else ANALYZE_PREFIX.format(t=t)
        if mode == "direct":
            params = _params(self._direct_tokens, (OUTPUT_END,))
        else:
            params = _params(self.budget, (ANALYZE_END,))
        firsts = await self._grouped(path_context, start, params, t)
        return list(
            await asyncio.gather(
                *(
                    self._finish(mode, path_context[i], start, firsts[i], path_history[i], t)
                    for i in range(self.maj)
                )
            )
        )

    async def _grouped(self, contexts: list[str], start: str, params, t: int) -> list[Sample]:
        """One request per distinct context, with ``n`` = the paths that share it."""
        groups: dict[str, list[int]] = {}
        for index, context in enumerate(contexts):
            groups.setdefault(context, []).append(index)
        samples: list[Sample | None] = [None] * len(contexts)

        async def ask(context: str, members: list[int]) -> None:
            request = self._request(context, start, replace(params, n=len(members)), t)
            completion = await self.engine.agenerate(request)
            for member, sample in zip(members, completion.samples, strict=True):
                samples[member] = sample

        await asyncio.gather(*(ask(context, members) for context, members in groups.items()))
        return samples

    async def _finish(
        self, mode: str, context: str, start: str, first: Sample, history: Sequence[_Turn], t: int
    ) -> _Turn:
        """The rest of one path's turn in ``mode`` after its first request (spec §3 steps
        2-4)."""
        spent = len(first.token_ids)
        if mode == "direct":
            return _Turn(start + first.text, self._reward(start, first), tokens=spent)
        analysis = first.text
        if mode == "cot":
            text = start + analysis + OUTPUT_PREFIX
            remaining = self.budget - self._count(text)
            if remaining <= 0:
                return await self._fallback(context, start, analysis, t, None, spent)
            final = await self._generate(context, text, _params(remaining, (OUTPUT_END,)), t)
            spent += len(final.token_ids)
            return _Turn(text + final.text, self._reward(text, final), tokens=spent)
        session = self._session(history)
        before = len(session.succeeded)
        try:
            outcome = await run_code_loop(
                self._verify_loop,
                start + analysis + VERIFY_PREFIX,
                _params(self.budget, ()),
                lambda text, params: self._generate(context, text, params, t),
                self._count,
                session,
            )
        except BaseException:
            await session.aclose()
            raise
        code = _PathCode(session.succeeded[before:], session)
        spent += outcome.tokens
        if outcome.final is not None:
            turn_text = outcome.text + outcome.final.text
            reward = self._reward(outcome.text, outcome.final)
            return _Turn(turn_text, reward, code, spent)
        return await self._fallback(context, start, analysis, t, code, spent)

    def _session(self, history: Sequence[_Turn]):
        """The sandbox session for a path that continues ``history``: the live one its latest
        code left, unless another continuation took it; else one rebuilt from the blocks
        that succeeded in the history (taken before the turn's first ``await``, so that path
        0 of a shared history is the one that continues it)."""
        latest = next((turn.code for turn in reversed(history) if turn.code is not None), None)
        live = latest.take() if latest is not None else None
        blocks = [
            block for turn in history if turn.code is not None for block in turn.code.succeeded
        ]
        return live or self.sandbox.session(blocks)

    async def _fallback(
        self, context: str, start: str, analysis: str, t: int, code: _PathCode | None, spent: int
    ) -> _Turn:
        """Rounds or budget ran out: the verify section is dropped and the judgement asked for
        right after the analysis. ``spent``: the tokens the turn generated before."""
        text = start + analysis.split(ANALYZE_END.rstrip("\n"))[0] + ANALYZE_END + OUTPUT_PREFIX
        final = await self._generate(context, text, _params(JUDGEMENT_TOKENS, (OUTPUT_END,)), t)
        spent += len(final.token_ids)
        return _Turn(text + final.text, self._reward(text, final), code, spent)

    async def _generate(self, context: str, assistant: str, params, t: int) -> Sample:
        completion = await self.engine.agenerate(self._request(context, assistant, params, t))
        return completion.samples[0]

    # -- prompts -------------------------------------------------------------------------

    def _context(self, problem: str, steps: list[str], t: int, history: Sequence[_Turn]) -> str:
        """The rendered conversation before the assistant text of step ``t``."""
        system = SYSTEM_DIRECT if self.mode == "direct" else SYSTEM_COT
        messages = [{"role": "system", "content": system}]
        for index in range(t):
            content = first_user_content(problem, steps[0]) if index == 0 else steps[index]
            messages.append({"role": "user", "content": content})
            if index < t - 1:
                messages.append({"role": "assistant", "content": history[index].text})
        if self.prompt_style == "upstream":
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=False
            )
            eos = self.tokenizer.eos_token
            for ending in (f"{eos}\n", eos):
                if eos and text.endswith(ending):
                    return text[: -len(ending)]
            return text
        messages.append({"role": "assistant", "content": _PLACEHOLDER})
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False
        )
        if text.count(_PLACEHOLDER) != 1:
            raise ValueError("the chat template does not render an assistant turn's content as is")
        return text[: text.index(_PLACEHOLDER)]

    def _request(self, context: str, assistant: str, params: SamplingParams, t: int) -> Request:
        prompt: Prompt
        if self.prompt_style == "upstream":
            prompt = context + assistant  # as text: the engine adds its BOS, as upstream's did
        else:
            prompt = self.tokenizer.encode(context + assistant, add_special_tokens=False)
        try:
            params = self.engine.fit_to_context(prompt, params)
        except ContextTooLong as error:
            raise ContextTooLong(f"step {t}: {error}") from error
        if self.seed is not None:
            params = replace(params, seed=self.seed)
        return Request(prompt, params)

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _first_tokens(self, word: str) -> frozenset[int]:
        """The first token of each case of ``word`` (``Yes``, ``yes``, ``YES``)."""
        firsts = set()
        for variant in (word, word.lower(), word.upper()):
            ids = self.tokenizer.encode(variant, add_special_tokens=False)
            if not ids:
                raise ValueError(f"the tokenizer encodes {variant!r} to no tokens")
            firsts.add(ids[0])
        return frozenset(firsts)

    # -- reward --------------------------------------------------------------------------

    def _reward(self, before: str, final: Sample) -> float:
        """p(Yes) / (p(Yes) + p(No)) at the generated token where the judgement after
        ``\\boxed{`` starts (the first token after the brace, for ``\\boxed{Yes}``), each word
        pooled over its cases (p(Yes) + p(yes) + p(YES): the case never decides, spec §3 item
        4) among the position's top log-probabilities and the sampled token; a word with none
        there takes the smallest probability returned. 0.5 without a Yes/No judgement; 1/0 from
        the text without logprobs, or where neither word is there."""
        text = before + final.text
        judgements = [m for m in _JUDGEMENT.finditer(text) if m.start(1) >= len(before)]
        if not judgements:
            return 0.5
        word = judgements[-1]
        hard = 1.0 if word[1].lower() == "yes" else 0.0
        if final.logprobs is None:
            return hard
        position = self._token_at(final.token_ids, word.start(1) - len(before))
        if position is None or position >= len(final.logprobs):
            return hard
        at = final.logprobs[position]
        candidates = list(at.top)
        if _key(at.chosen) not in {_key(candidate) for candidate in candidates}:
            candidates.append(at.chosen)  # sampled below the top ones
        found = {}
        for name, token_ids in (("yes", self._yes), ("no", self._no)):
            texts = {self.tokenizer.decode([token_id]) for token_id in token_ids}
            pooled = [
                math.exp(candidate.logprob)
                for candidate in candidates
                if candidate.token_id in token_ids
                or (candidate.token_id is None and candidate.token in texts)
            ]
            if pooled:
                found[name] = sum(pooled)
        if not found:
            return hard
        smallest = min(math.exp(candidate.logprob) for candidate in candidates)
        yes, no = found.get("yes", smallest), found.get("no", smallest)
        return yes / (yes + no) if yes + no > 0 else 0.5

    def _token_at(self, token_ids: list[int], offset: int) -> int | None:
        """The index of the generated token in which character ``offset`` of the generated
        text starts (decoding prefixes, so that multi-byte tokens count right)."""
        low, high = 0, len(token_ids)
        while low < high:  # the first k whose decoded prefix reaches past offset
            middle = (low + high) // 2
            if len(self.tokenizer.decode(token_ids[: middle + 1])) > offset:
                high = middle
            else:
                low = middle + 1
        return low if low < len(token_ids) else None


def first_wrong(rewards: Sequence[float]) -> int:
    """The first step whose reward is below 0.5, or -1.

    >>> first_wrong([0.9, 0.7, 0.2, 0.1]), first_wrong([0.5, 0.99])
    (2, -1)
    """
    return next((index for index, reward in enumerate(rewards) if reward < WRONG_BELOW), -1)


def _key(candidate) -> int | str:
    """What tells two returned tokens apart: the id, or the text from a server without ids."""
    return candidate.token if candidate.token_id is None else candidate.token_id


def _params(max_tokens: int, stop: tuple[str, ...]) -> SamplingParams:
    return SamplingParams(
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=TOP_K,
        max_tokens=max_tokens,
        stop=stop,
        include_stop_str_in_output=True,
        logprobs=LOGPROBS,
    )
