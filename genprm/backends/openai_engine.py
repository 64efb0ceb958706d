"""The HTTP engine: any OpenAI-compatible ``/v1/completions`` server (vLLM, SGLang), one or many.

Requests go to the least busy server, at most ``max_concurrency`` times the number of
servers in flight at a time.
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (on another
server when there is one; a ``Retry-After`` answer lengthens the wait, up to ``max_backoff_s``);
other 4xx fail at once with the server's message. The API key comes from the environment and is
never logged.

A request with no answer for ``timeout_s`` (of a streamed one: no new bytes) is given up and
retried. A non-streamed answer comes whole, after the whole generation, so that limit is long;
a hung server is found sooner: after ``WAIT_NOTICE_S`` without an answer the engine says so,
naming the server, and asks it for ``/v1/models``; a server that answers that neither (stopped,
cut off) is given up on at once. Every retry is logged with its server and reason.

vLLM's extensions are used where a server accepts them: generated token ids
(``return_token_ids``, ``return_tokens_as_token_ids``), ``include_stop_str_in_output`` with the
``stop_reason`` of each sample, ``top_k``, prefix-cache hits. A server that rejects a field as an
unknown argument (as OpenAI's API does) is asked again without it and never sent it again; what
the field did is emulated: token ids come from the local tokenizer, and stop strings are applied
on the client, as vLLM applies them, over a streamed response closed at the first match. A
setting that cannot be emulated (``top_k``, ``seed``) is ignored with a warning, once per engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import math
import os
import re
import threading
import time

import httpx

from .types import (
    Completion,
    Engine,
    EngineError,
    PositionLogprobs,
    Request,
    Sample,
    SamplingParams,
    TokenLogprob,
)

LOG = logging.getLogger(__name__)
_TOKEN_ID_PREFIX = "token_id:"
# A server that just failed gets requests only when every other one failed recently too;
# after this long it is tried like the others again (it may have been restarted).
FAILURE_COOLDOWN_S = 30.0
TIMEOUT_S = 600.0
"""Seconds a request may wait for an answer (a long generation on a busy server takes minutes)."""
RETRIES = 3
WAIT_NOTICE_S = 30.0
"""A request unanswered this long is announced (once per server in this time) and its server
asked whether it still answers at all, within ``PROBE_TIMEOUT_S``."""
PROBE_TIMEOUT_S = 10.0
# Fields outside the core OpenAI completions API that a server may refuse.
OPTIONAL_FIELDS = (
    "return_token_ids",
    "return_tokens_as_token_ids",
    "include_stop_str_in_output",
    "top_k",
    "seed",
)
# How servers word a refused field: OpenAI ("Unrecognized request argument supplied: top_k"),
# pydantic ("Extra inputs are not permitted", type extra_forbidden), others.
_UNKNOWN_ARGUMENT = re.compile(
    r"unrecogni[sz]ed|unknown|not permitted|extra[ _](?:inputs|fields|forbidden)|unexpected"
    r"|not supported|unsupported",
    re.IGNORECASE,
)
_sleep = asyncio.sleep  # the backoff's clock; tests replace it


class _Transient(Exception):
    """A failure worth retrying (on another server when there is one)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Learned(Exception):
    """The server turned out to lack a feature the request used; build it again."""


class _Server:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.in_flight = 0
        self.completed = 0
        self.failed_at = -FAILURE_COOLDOWN_S
        self.accepted: set[str] = set()
        """Optional fields this server has answered a request with."""
        self.unsupported: set[str] = set()
        """Optional fields this server refused as unknown arguments."""
        self.reports_stop_reason = True
        """False once a response lacked ``stop_reason`` (which stop string ended a sample)."""
        self.probing = asyncio.Lock()
        """Held while a request finds out about fields new to this server."""
        self.checking = asyncio.Lock()
        """Held while a waiting request asks whether the server still answers."""
        self.answered_at = -math.inf
        """When the server last answered: a request, or whether it still answers."""
        self.silent_at = -math.inf
        """When the server last did not answer whether it still answers."""
        self.noticed_at = -math.inf
        """When the engine last said it was waiting on this server."""

    @property
    def failing(self) -> bool:
        return time.monotonic() - self.failed_at < FAILURE_COOLDOWN_S

    def untested(self, body: dict) -> set[str]:
        return {f for f in OPTIONAL_FIELDS if f in body} - self.accepted

    def client_stops(self, params: SamplingParams) -> bool:
        """Whether this server's stop strings are applied on the client instead."""
        return bool(params.stop) and (
            "include_stop_str_in_output" in self.unsupported or not self.reports_stop_reason
        )


class OpenAIEngine(Engine):
    """One client for one or many OpenAI-compatible servers serving the same model.

    ``model`` defaults to the first model the first server lists; every server must serve it.
    ``tokenizer`` (a local path or hub id, loaded with transformers) defaults to the served
    model's path; without one, top log-probabilities carry decoded tokens but no ids, servers
    without vLLM's extensions cannot be used, and ``tokenizer`` raises. ``transport`` replaces
    the network (tests).
    """

    name = "openai"

    def __init__(
        self,
        base_urls: str | list[str],
        *,
        model: str | None = None,
        tokenizer: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 64,
        retries: int = RETRIES,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__()
        check_limits(
            max_concurrency=max_concurrency, retries=retries, backoff_s=backoff_s,
            max_backoff_s=max_backoff_s, timeout_s=timeout_s,
        )  # fmt: skip
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("give at least one base URL")
        self.servers = [_Server(url) for url in urls]
        self._turn = 0
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self._warned: set[str] = set()
        api_key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="genprm-openai", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None

        async def start() -> tuple[str, str]:
            self._slots = asyncio.Semaphore(max_concurrency * len(self.servers))
            # one connection more per server: asking a busy server whether it still answers
            limits = httpx.Limits(max_connections=(max_concurrency + 1) * len(self.servers))
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=10.0),
                limits=limits,
                transport=transport,
            )
            return await self._check_health(model)

        try:
            self.model, served_path = self._call(start())
        except BaseException:
            self.close()
            raise
        self._tokenizer_name = tokenizer or served_path
        self._tokenizer = None
        self._tokenizer_error: str | None = None
        self._load_tokenizer()

    # -- set-up -------------------------------------------------------------------------

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _check_health(self, model: str | None) -> tuple[str, str]:
        """Every server answers /v1/models and serves the model; returns (model name, its path
        on the first server)."""
        failures, listed = [], {}
        for server in self.servers:
            try:
                response = await self._client.get(f"{server.base_url}/models", timeout=10.0)
                response.raise_for_status()
                listed[server.base_url] = {m["id"]: m for m in response.json()["data"]}
            except (httpx.HTTPError, KeyError, TypeError, ValueError) as error:
                failures.append(f"{server.base_url}: {_describe(error)}")
        if failures:
            raise EngineError("server health check failed: " + "; ".join(failures))
        first = self.servers[0].base_url
        if not listed[first]:
            raise EngineError(f"{first} serves no model")
        model = model or next(iter(listed[first]))
        lacking = [
            f"{url} does not serve {model!r} (serves {', '.join(models) or 'nothing'})"
            for url, models in listed.items()
            if model not in models
        ]
        if lacking:
            raise EngineError("; ".join(lacking))
        entry = listed[first][model]
        # vLLM servers say how long a context they take; the shortest one bounds every request.
        lengths = [models[model].get("max_model_len") for models in listed.values()]
        if all(isinstance(length, int) for length in lengths):
            self.max_model_len = min(lengths)
        return entry["id"], entry.get("root") or entry["id"]

    def _load_tokenizer(self) -> None:
        try:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
        except Exception as error:  # noqa: BLE001 - ImportError, or a path only the server has
            self._tokenizer_error = (
                f"no local tokenizer for {self._tokenizer_name!r} ({type(error).__name__}: "
                f"{error}); pass tokenizer=PATH (--tokenizer)"
            )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise EngineError(self._tokenizer_error)
        return self._tokenizer

    def requests_per_server(self) -> dict[str, int]:
        return {server.base_url: server.completed for server in self.servers}

    # -- requests -----------------------------------------------------------------------

    def _submit(self, request: Request) -> concurrent.futures.Future:
        if self._closed:
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(EngineError("the openai engine is closed"))
            return future
        return asyncio.run_coroutine_threadsafe(self._complete(request), self._loop)

    async def _complete(self, request: Request) -> Completion:
        last_error, delay = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                await _sleep(delay)
            async with self._slots:
                server = self._pick()
                server.in_flight += 1
                try:
                    return await self._attempt(server, request)
                except _Transient as error:
                    last_error = f"{server.base_url}: {error}"
                    delay = self._backoff(attempt, error.retry_after)
                    if attempt < self.retries:
                        LOG.warning(
                            "waiting on %s (retry %d/%d)", last_error, attempt + 1, self.retries
                        )
                finally:
                    server.in_flight -= 1
        LOG.warning("giving up on a request after %d attempts: %s", self.retries + 1, last_error)
        raise EngineError(
            f"no server answered after {self.retries + 1} attempts; last: {last_error}"
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff_s * 2**attempt
        return min(max(delay, retry_after or 0.0), self.max_backoff_s)

    def _pick(self) -> _Server:
        """Not recently failed first, then least busy, ties taken in turn."""
        self._turn += 1
        count = len(self.servers)
        order = {id(s): (i - self._turn) % count for i, s in enumerate(self.servers)}
        return min(self.servers, key=lambda s: (s.failing, s.in_flight, order[id(s)]))

    async def _attempt(self, server: _Server, request: Request) -> Completion:
        """One answer from ``server``, asking again as often as it turns out to lack a field.
        Requests with fields new to the server go one at a time, so each field is refused at
        most once per server."""
        while True:
            body, stream = self._body(request, server)
            try:
                if not server.untested(body):
                    return await self._send(server, request, body, stream)
                async with server.probing:
                    if server.untested(body) and (body, stream) == self._body(request, server):
                        return await self._send(server, request, body, stream)
            except _Learned:
                pass

    def _body(self, request: Request, server: _Server) -> tuple[dict, bool]:
        """The request body for ``server``, and whether to stream it (client-side stops)."""
        params = request.params
        stream = server.client_stops(params)
        body = {
            "model": self.model,
            "prompt": request.prompt,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        optional = {}
        if stream:
            body["stream"] = True
        else:
            optional["return_token_ids"] = True
            if params.stop:
                body["stop"] = list(params.stop)
                optional["include_stop_str_in_output"] = params.include_stop_str_in_output
        if params.top_k > 0:
            optional["top_k"] = params.top_k
        if params.seed is not None:
            optional["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
            if self._tokenizer is not None:
                optional["return_tokens_as_token_ids"] = True
        for field, value in optional.items():
            if field not in server.unsupported:
                body[field] = value
            elif field in ("top_k", "seed"):
                self._warn_ignored(server, field, value)
        return body, stream

    def _warn_ignored(self, server: _Server, field: str, value) -> None:
        if field not in self._warned:
            self._warned.add(field)
            LOG.warning(
                "%s does not support %s: %s=%r is ignored", server.base_url, field, field, value
            )

    async def _send(
        self, server: _Server, request: Request, body: dict, stream: bool
    ) -> Completion:
        """:meth:`_exchange`, watched until the answer starts: the server must still answer."""
        answered = asyncio.Event()
        exchange = asyncio.ensure_future(self._exchange(server, request, body, stream, answered))
        started = time.monotonic()
        try:
            while not (await asyncio.wait([exchange], timeout=WAIT_NOTICE_S))[0]:
                if answered.is_set():  # streaming: the read timeout covers the gaps
                    return await exchange
                waited = time.monotonic() - started
                self._notice(server, waited)
                if not await self._answers(server):
                    server.failed_at = time.monotonic()
                    raise _Transient(
                        f"no answer for {waited:.0f} s, nor to {server.base_url}/models"
                    )
            return exchange.result()
        finally:
            exchange.cancel()

    def _notice(self, server: _Server, waited: float) -> None:
        now = time.monotonic()
        if now - server.noticed_at >= WAIT_NOTICE_S:
            server.noticed_at = now
            LOG.warning(
                "waiting on %s: no answer for %.0f s (%d requests there; one gives up after %g s)",
                server.base_url, waited, server.in_flight, self.timeout_s,
            )  # fmt: skip

    async def _answers(self, server: _Server) -> bool:
        """Whether the server answers ``/models`` now; its waiting requests share one asking."""
        async with server.checking:
            now = time.monotonic()
            if now - server.answered_at < WAIT_NOTICE_S:
                return True
            if now - server.silent_at < WAIT_NOTICE_S:
                return False
            try:
                url = f"{server.base_url}/models"
                response = await self._client.get(url, timeout=PROBE_TIMEOUT_S)
                answers = response.status_code < 500
            except httpx.HTTPError:
                answers = False
            if answers:
                server.answered_at = time.monotonic()
            else:
                server.silent_at = time.monotonic()
            return answers

    async def _exchange(
        self, server: _Server, request: Request, body: dict, stream: bool, answered: asyncio.Event
    ) -> Completion:
        url = f"{server.base_url}/completions"
        try:
            async with self._client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._refused(server, response, body)
                server.failed_at = -FAILURE_COOLDOWN_S
                server.answered_at = time.monotonic()
                answered.set()
                if stream:
                    choices = await self._read_stream(response, request.params)
                else:
                    payload = json.loads(await response.aread())
        except httpx.ReadTimeout as error:
            server.failed_at = time.monotonic()
            raise _Transient(f"ReadTimeout: no answer for {self.timeout_s:g} s") from error
        except httpx.TransportError as error:  # connection refused or reset, other timeouts
            server.failed_at = time.monotonic()
            raise _Transient(_describe(error)) from error
        except (LookupError, TypeError, ValueError) as error:
            raise EngineError(f"{url} sent an unreadable completion: {error!r}") from error
        server.accepted |= server.untested(body)
        try:
            if stream:
                completion = self._streamed_completion(choices, request)
            else:
                completion = self._completion(payload, request, server)
        except (LookupError, TypeError, ValueError) as error:
            raise EngineError(f"{url} sent an unreadable completion: {error!r}") from error
        server.completed += 1
        return completion

    def _refused(self, server: _Server, response: httpx.Response, body: dict) -> None:
        """Raises what an HTTP error answer means: retry, ask again without a field, or fail."""
        status, message = response.status_code, _message(response)
        if status == 429 or status >= 500:
            if status >= 500:
                server.failed_at = time.monotonic()
            raise _Transient(f"HTTP {status} {message}", _retry_after(response))
        server.failed_at = -FAILURE_COOLDOWN_S
        named = {f for f in OPTIONAL_FIELDS if f in body and re.search(rf"\b{f}\b", message)}
        if status in (400, 422) and named and _UNKNOWN_ARGUMENT.search(message):
            server.unsupported |= named
            LOG.info(
                "%s refuses %s: emulated or ignored", server.base_url, ", ".join(sorted(named))
            )
            raise _Learned
        raise EngineError(f"{server.base_url} rejected the request: HTTP {status} {message}")

    # -- reading answers ----------------------------------------------------------------

    def _completion(self, payload: dict, request: Request, server: _Server) -> Completion:
        choices = sorted(payload["choices"], key=lambda c: c["index"])
        if len(choices) != request.params.n:
            raise ValueError(f"asked for {request.params.n} samples, got {len(choices)}")
        if request.params.stop and any("stop_reason" not in c for c in choices):
            server.reports_stop_reason = False
            LOG.info("%s does not say which stop string ended a sample", server.base_url)
            if any(c["finish_reason"] == "stop" for c in choices):
                raise _Learned
        samples = [self._sample(choice, request.params) for choice in choices]
        usage = payload.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = self._prompt_tokens(request)
        details = usage.get("prompt_tokens_details") or {}
        return Completion(samples, prompt_tokens, details.get("cached_tokens"))

    def _sample(self, choice: dict, params: SamplingParams) -> Sample:
        finish, stop_reason = choice["finish_reason"], choice.get("stop_reason")
        if finish not in ("stop", "length"):
            raise ValueError(f"finish_reason {finish!r}")
        token_ids = choice.get("token_ids")
        if token_ids is None:  # a server without vLLM's return_token_ids
            generated = choice["text"]
            if isinstance(stop_reason, str) and not params.include_stop_str_in_output:
                generated += stop_reason  # its tokens were generated, then stripped
            token_ids = self._encode(generated)
        logprobs = None
        if params.logprobs is not None and choice.get("logprobs"):
            logprobs = self._positions(choice["logprobs"], token_ids, params.logprobs)
        return Sample(choice["text"], list(token_ids), finish, stop_reason, logprobs)

    async def _read_stream(self, response: httpx.Response, params: SamplingParams):
        """The choices of a streamed completion, read until every one has finished or hit a
        stop string (the stream is closed then: the server stops generating)."""
        choices = [_StreamedChoice(params.stop) for _ in range(params.n)]
        async for line in response.aiter_lines():
            data = line.removeprefix("data:").strip()
            if not line.startswith("data:") or not data:
                continue
            if data == "[DONE]":
                break
            for choice in json.loads(data)["choices"]:
                streamed = choices[choice["index"]]
                if streamed.finish_reason is None:
                    streamed.add(choice)
            if all(c.finish_reason is not None for c in choices):
                break
        return choices

    def _streamed_completion(self, choices: list[_StreamedChoice], request: Request):
        samples = []
        for choice in choices:
            if choice.finish_reason not in ("stop", "length"):
                raise ValueError(f"a streamed sample ended with {choice.finish_reason!r}")
            text, token_ids = choice.text, self._encode(choice.text)
            if choice.stop_reason is not None:
                start, end = choice.stop_span
                token_ids = self._through(token_ids, end)
                text = text[: end if request.params.include_stop_str_in_output else start]
            logprobs = None
            if request.params.logprobs is not None and choice.logprobs["tokens"]:
                logprobs = self._positions(choice.logprobs, token_ids, request.params.logprobs)
                logprobs = logprobs[: len(token_ids)]
            samples.append(
                Sample(text, token_ids, choice.finish_reason, choice.stop_reason, logprobs)
            )
        return Completion(samples, self._prompt_tokens(request))

    def _through(self, token_ids: list[int], end: int) -> list[int]:
        """The tokens up to the one that completes the text's first ``end`` characters (vLLM
        keeps the whole token that completes a stop string)."""
        count = len(token_ids)
        while count > 1 and len(self.tokenizer.decode(token_ids[: count - 1])) >= end:
            count -= 1
        return token_ids[:count]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prompt_tokens(self, request: Request) -> int:
        if isinstance(request.prompt, list):
            return len(request.prompt)
        return len(self.tokenizer.encode(request.prompt))

    def _positions(self, logprobs: dict, token_ids: list[int], k: int) -> list[PositionLogprobs]:
        positions = []
        for index, (token, logprob, top) in enumerate(
            zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])
        ):
            chosen = self._entry(token, logprob)
            if index < len(token_ids) and chosen.token_id != token_ids[index]:
                chosen = TokenLogprob(chosen.token, chosen.logprob, token_ids[index])
            ranked = sorted((top or {}).items(), key=lambda item: -item[1])[:k]
            positions.append(PositionLogprobs(chosen, [self._entry(t, lp) for t, lp in ranked]))
        return positions

    def _entry(self, token: str, logprob: float) -> TokenLogprob:
        """A log-probability entry; without the server's ids, the id is the local tokenizer's
        where the token is one token of it."""
        if self._tokenizer is None:
            return TokenLogprob(token, logprob, None)
        if token.startswith(_TOKEN_ID_PREFIX):
            token_id = int(token.removeprefix(_TOKEN_ID_PREFIX))
            return TokenLogprob(self._tokenizer.decode([token_id]), logprob, token_id)
        ids = self._encode(token)
        return TokenLogprob(token, logprob, ids[0] if len(ids) == 1 else None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _StreamedChoice:
    """One sample of a streamed completion, its stop strings applied as vLLM applies them."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = stop
        self.text = ""
        self.logprobs: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.stop_span = (0, 0)
        """Where the matched stop string is in ``text``."""

    def add(self, choice: dict) -> None:
        delta = choice.get("text") or ""
        self.text += delta
        for key, values in (choice.get("logprobs") or {}).items():
            if key in self.logprobs:
                self.logprobs[key].extend(values)
        match = find_stop(self.text, len(delta), self.stop)
        if match:
            self.stop_reason, self.stop_span = match
            self.finish_reason = "stop"
        elif choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]


def find_stop(
    text: str, new_chars: int, stop: tuple[str, ...]
) -> tuple[str, tuple[int, int]] | None:
    """The stop string that ends in the last ``new_chars`` characters of ``text``, and where it
    is; as vLLM's ``check_stop_strings``: the one that ends first, ties in ``stop``'s order.

    >>> find_stop("a</output>\\n```\\n", 6, ("\\n```\\n", "</output>\\n"))
    ('</output>\\n', (1, 11))
    """
    best = None
    for candidate in stop:
        at = text.find(candidate, max(len(text) - new_chars - len(candidate) + 1, 0))
        if at != -1 and (best is None or at + len(candidate) < best[1][1]):
            best = (candidate, (at, at + len(candidate)))
    return best


def check_limits(**options) -> None:
    """A ValueError naming the first of the engine's counts and seconds (of ``options``) out of
    range: no request could be sent, or none could wait."""
    for name, least in (("max_concurrency", 1), ("retries", 0)):
        if name in options and options[name] < least:
            raise ValueError(f"{name} must be at least {least}, got {options[name]!r}")
    for name in ("backoff_s", "max_backoff_s", "timeout_s"):
        if name in options and not options[name] > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {options[name]!r}")


def _retry_after(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date), if it sent one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _message(response: httpx.Response) -> str:
    """The server's error text, short (bodies of 4xx/5xx answers from vLLM are JSON)."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return text[:500]
