"""The HTTP engine: any OpenAI-compatible ``/v1/completions`` server (vLLM, SGLang), one or many.

Which server gets a request, retries and hung servers are :mod:`.openai_transport`'s. The API
key comes from the environment.

vLLM's extensions are used where a server accepts them: generated token ids
(``return_token_ids``, ``return_tokens_as_token_ids``), ``include_stop_str_in_output`` with the
``stop_reason`` of each sample, ``top_k``, prefix-cache hits. A server that rejects a field as an
unknown argument (as OpenAI's API does) is asked again without it and never sent it again; what
the field did is emulated: token ids come from the local tokenizer, and stop strings are applied
on the client, as vLLM applies them, over a streamed response closed at the first match
(:mod:`.stop_strings`). A setting that cannot be emulated (``top_k``, ``seed``) is ignored with a
warning, once per engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import threading

import httpx

from .openai_transport import RETRIES, TIMEOUT_S, Rejected, Server, ServerPool
from .stop_strings import StreamedChoice, read_stream
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


class _Learned(Exception):
    """The server turned out to lack a feature the request used; build it again."""


class _OpenAIServer(Server):
    """A server, and which of the optional fields it turned out to take."""

    def __init__(self, base_url: str):
        super().__init__(base_url)
        self.completed = 0
        self.accepted: set[str] = set()
        """Optional fields this server has answered a request with."""
        self.unsupported: set[str] = set()
        """Optional fields this server refused as unknown arguments."""
        self.reports_stop_reason = True
        """False once a response lacked ``stop_reason`` (which stop string ended a sample)."""
        self.probing = asyncio.Lock()
        """Held while a request finds out about fields new to this server."""

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
        self.servers = [_OpenAIServer(url) for url in urls]
        self._warned: set[str] = set()
        api_key = os.environ.get(api_key_env)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="genprm-openai", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._pool: ServerPool | None = None

        async def start() -> tuple[str, str]:
            self._pool = ServerPool(
                self.servers, api_key=api_key, max_concurrency=max_concurrency,
                retries=retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                timeout_s=timeout_s, transport=transport,
            )  # fmt: skip
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
        listed = await self._pool.models()
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
        attempts = self._pool.call(lambda server: self._attempt(server, request))
        return asyncio.run_coroutine_threadsafe(attempts, self._loop)

    async def _attempt(self, server: _OpenAIServer, request: Request) -> Completion:
        """One answer from ``server``, asking again as often as it turns out to lack a field.
        Requests with fields new to the server go one at a time, so each field is refused at
        most once per server."""
        while True:
            body, stream = self._body(request, server)
            try:
                if not server.untested(body):
                    return await self._exchange(server, request, body, stream)
                async with server.probing:
                    if server.untested(body) and (body, stream) == self._body(request, server):
                        return await self._exchange(server, request, body, stream)
            except _Learned:
                pass

    def _body(self, request: Request, server: _OpenAIServer) -> tuple[dict, bool]:
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

    def _warn_ignored(self, server: _OpenAIServer, field: str, value) -> None:
        if field not in self._warned:
            self._warned.add(field)
            LOG.warning(
                "%s does not support %s: %s=%r is ignored", server.base_url, field, field, value
            )

    async def _exchange(
        self, server: _OpenAIServer, request: Request, body: dict, stream: bool
    ) -> Completion:
        read = (lambda response: read_stream(response, request.params)) if stream else _payload
        try:
            answer = await self._pool.send(server, body, read)
            server.accepted |= server.untested(body)
            if stream:
                completion = self._streamed_completion(answer, request)
            else:
                completion = self._completion(answer, request, server)
        except Rejected as rejected:
            self._learn(server, rejected, body)
            raise
        except (LookupError, TypeError, ValueError) as error:
            url = f"{server.base_url}/completions"
            raise EngineError(f"{url} sent an unreadable completion: {error!r}") from error
        server.completed += 1
        return completion

    def _learn(self, server: _OpenAIServer, rejected: Rejected, body: dict) -> None:
        """Raises _Learned where the server refused optional fields of ``body`` as unknown
        arguments."""
        message = rejected.message
        named = {f for f in OPTIONAL_FIELDS if f in body and re.search(rf"\b{f}\b", message)}
        if rejected.status in (400, 422) and named and _UNKNOWN_ARGUMENT.search(message):
            server.unsupported |= named
            LOG.info(
                "%s refuses %s: emulated or ignored", server.base_url, ", ".join(sorted(named))
            )
            raise _Learned from None

    # -- reading answers ----------------------------------------------------------------

    def _completion(self, payload: dict, request: Request, server: _OpenAIServer) -> Completion:
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

    def _streamed_completion(self, choices: list[StreamedChoice], request: Request):
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
        if self._pool is not None:
            self._call(self._pool.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def check_limits(**options) -> None:
    """A ValueError naming the first of the engine's counts and seconds (of ``options``) out of
    range: no request could be sent, or none could wait."""
    for name, least in (("max_concurrency", 1), ("retries", 0)):
        if name in options and options[name] < least:
            raise ValueError(f"{name} must be at least {least}, got {options[name]!r}")
    for name in ("backoff_s", "max_backoff_s", "timeout_s"):
        if name in options and not options[name] > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {options[name]!r}")


async def _payload(response: httpx.Response) -> dict:
    return json.loads(await response.aread())
