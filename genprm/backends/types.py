"""What every generation engine takes and returns, and the base class they share.

An engine turns requests (a prompt plus vLLM-style sampling settings) into completions, in
request order, through a blocking batch call (``generate``) or an awaitable per request
(``agenerate``). Engines run their own worker thread; both calls only hand work to it, so one
engine serves many threads and any asyncio loop at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

Prompt = str | list[int]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, named and defaulted as in vLLM's ``SamplingParams``.

    >>> SamplingParams(n=2, stop="\\n").stop
    ('\\n',)
    """

    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    """0 (or -1) considers every token."""
    max_tokens: int = 16
    """Generated tokens per sample at most; a sample cut here finishes with ``"length"``."""
    stop: tuple[str, ...] = ()
    """Strings that end a sample (``finish_reason == "stop"``, ``stop_reason`` the string)."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text (the GenPRM protocol keeps some)."""
    logprobs: int | None = None
    """Top log-probabilities to return per generated token; None for none."""
    seed: int | None = None
    """Per-request seed: the same seed and prompt give the same samples."""

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 needs temperature > 0: greedy samples are all the same")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class Request:
    """A prompt (text, or token ids) and how to sample from it."""

    prompt: Prompt
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self):
        if isinstance(self.prompt, str):
            return
        if not self.prompt or not all(isinstance(t, int) for t in self.prompt):
            raise ValueError("a prompt is a string or a non-empty list of token ids")
        object.__setattr__(self, "prompt", list(self.prompt))


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    """The token decoded on its own."""
    logprob: float
    token_id: int | None = None
    """None only from a server that reports decoded tokens without ids."""


@dataclass(frozen=True)
class PositionLogprobs:
    """One generated position: the sampled token and the ``logprobs`` most likely ones,
    most likely first (the sampled token is among them unless it was less likely)."""

    chosen: TokenLogprob
    top: list[TokenLogprob]


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: list[int]
    """Every generated token, including those of a stop string stripped from ``text``."""
    finish_reason: FinishReason
    stop_reason: str | int | None = None
    """The stop string that ended the sample; None when it ended on end-of-sequence or length."""
    logprobs: list[PositionLogprobs] | None = None
    """One entry per generated token when ``SamplingParams.logprobs`` was set."""


@dataclass(frozen=True)
class Completion:
    samples: list[Sample]
    prompt_tokens: int
    cached_prompt_tokens: int | None = None
    """Prompt tokens served from the prefix cache, where the engine reports it."""


class EngineError(RuntimeError):
    """A generation failed. ``results`` holds, in request order, every completion that did
    finish (None where one did not), so a caller loses no finished work."""

    def __init__(self, message: str, results: list[Completion | None] | None = None):
        super().__init__(message)
        self.results = results or []

    @property
    def pending(self) -> list[int]:
        """Indices of the requests without a result."""
        return [i for i, result in enumerate(self.results) if result is None]


class ContextTooLong(ValueError):
    """A prompt does not fit the model's context, leaving no room to generate."""


@dataclass
class Counters:
    """Totals since the engine started; ``wall_s`` counts time with work in flight."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s else 0.0


class Engine(ABC):
    """The interface later stages use. Subclasses implement ``_submit`` (thread-safe, returns a
    future), ``tokenizer`` and ``close``."""

    name: str
    max_model_len: int | None = None
    """The model's context in tokens (prompt and generation), where the engine knows it."""

    def __init__(self):
        self._counters = Counters()
        self._counter_lock = threading.Lock()
        self._in_flight = 0
        self._busy_since = 0.0

    @abstractmethod
    def _submit(self, request: Request) -> concurrent.futures.Future:
        """Start one request; the future resolves to its Completion or raises EngineError."""

    @property
    @abstractmethod
    def tokenizer(self):
        """The model's tokenizer (``encode``, ``decode``, ``apply_chat_template``)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the engine and everything it started; idempotent."""

    @property
    def counters(self) -> Counters:
        with self._counter_lock:
            counters = Counters(**vars(self._counters))
            if self._in_flight:
                counters.wall_s += time.monotonic() - self._busy_since
            return counters

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text the model's own chat template renders for ``messages``."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def fit_to_context(self, prompt: Prompt, params: SamplingParams) -> SamplingParams:
        """``params`` with ``max_tokens`` capped to the context ``prompt`` leaves (unchanged
        where the engine does not know its context). A text prompt counts as the engine
        tokenizes it, special tokens included. ContextTooLong when the prompt alone fills it.

        >>> from genprm.testing import ScriptedEngine  # one token per character
        >>> engine = ScriptedEngine({}, max_model_len=10)
        >>> engine.fit_to_context("2+3=", SamplingParams(max_tokens=16)).max_tokens
        6
        >>> engine.fit_to_context([7] * 10, SamplingParams())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        genprm.backends.types.ContextTooLong: the prompt takes 10 tokens, ... context of 10
        """
        if self.max_model_len is None:
            return params
        length = len(prompt) if isinstance(prompt, list) else len(self.tokenizer.encode(prompt))
        room = self.max_model_len - length
        if room < 1:
            raise ContextTooLong(
                f"the prompt takes {length} tokens, more than the model's context of"
                f" {self.max_model_len}"
            )
        return replace(params, max_tokens=min(params.max_tokens, room))

    def generate(
        self, requests: Sequence[Request | Prompt], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Completions for ``requests``, in order. Bare prompts take ``params`` (or defaults).

        Raises EngineError when any request fails, after the others have finished; its
        ``results`` keeps every completion that did finish.
        """
        requests = [as_request(r, params) for r in requests]
        futures = [self.submit(r) for r in requests]
        results: list[Completion | None] = []
        errors: list[tuple[int, BaseException]] = []
        for index, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as error:  # noqa: BLE001 - reported in the EngineError
                results.append(None)
                errors.append((index, error))
        if errors:
            index, first = errors[0]
            raise EngineError(
                f"{len(errors)} of {len(requests)} requests failed; first (request {index}): "
                f"{first}",
                results,
            ) from first
        return results

    async def agenerate(
        self, request: Request | Prompt, params: SamplingParams | None = None
    ) -> Completion:
        """One completion, awaited from any event loop."""
        return await asyncio.wrap_future(self.submit(as_request(request, params)))

    def submit(self, request: Request) -> concurrent.futures.Future:
        """Start ``request`` now; a future of its Completion (what ``generate`` waits on)."""
        self._begin()
        future = self._submit(request)
        future.add_done_callback(self._finish)
        return future

    def _begin(self) -> None:
        with self._counter_lock:
            if self._in_flight == 0:
                self._busy_since = time.monotonic()
            self._in_flight += 1

    def _finish(self, future: concurrent.futures.Future) -> None:
        completion = None if future.cancelled() or future.exception() else future.result()
        with self._counter_lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._counters.wall_s += time.monotonic() - self._busy_since
            if completion is not None:
                self._counters.requests += 1
                self._counters.prompt_tokens += completion.prompt_tokens
                self._counters.generated_tokens += sum(
                    len(sample.token_ids) for sample in completion.samples
                )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def as_request(request: Request | Prompt, params: SamplingParams | None = None) -> Request:
    if isinstance(request, Request):
        if params is not None:
            raise ValueError("pass sampling params either in each Request or as params, not both")
        return request
    return Request(request, params or SamplingParams())
