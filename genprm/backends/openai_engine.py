"""The HTTP engine: any OpenAI-compatible ``/v1/completions`` server (vLLM, SGLang), one or many.

Requests go to the least busy server, at most ``max_concurrency`` times the number of
servers in flight at a time.
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (on another
server when there is one); other 4xx fail at once with the server's message. The API key comes
from the environment and is never logged. vLLM's extensions are used when present: generated
token ids (``return_token_ids``), ``top_k``, ``include_stop_str_in_output``, prefix-cache hits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
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
    TokenLogprob,
)

LOG = logging.getLogger(__name__)
_TOKEN_ID_PREFIX = "token_id:"
# A server that just failed gets requests only when every other one failed recently too;
# after this long it is tried like the others again (it may have been restarted).
FAILURE_COOLDOWN_S = 30.0


class _Server:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.in_flight = 0
        self.completed = 0
        self.failed_at = -FAILURE_COOLDOWN_S

    @property
    def failing(self) -> bool:
        return time.monotonic() - self.failed_at < FAILURE_COOLDOWN_S


class OpenAIEngine(Engine):
    """One client for one or many OpenAI-compatible servers serving the same model.

    ``model`` defaults to the first model a server lists. ``tokenizer`` (a local path or hub
    id, loaded with transformers) defaults to the served model's path; without one, top
    log-probabilities carry decoded tokens but no ids, and ``tokenizer`` raises.
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
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 600.0,
    ):
        super().__init__()
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("give at least one base URL")
        self.servers = [_Server(url) for url in urls]
        self._turn = 0
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
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
            limits = httpx.Limits(max_connections=max_concurrency * len(self.servers))
            self._client = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits
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
        """Every server answers /v1/models; returns (model name, its path on the server)."""
        failures, listed = [], {}
        for server in self.servers:
            try:
                response = await self._client.get(f"{server.base_url}/models", timeout=10.0)
                response.raise_for_status()
                listed[server.base_url] = response.json()["data"]
            except (httpx.HTTPError, KeyError, ValueError) as error:
                failures.append(f"{server.base_url}: {_describe(error)}")
        if failures:
            raise EngineError("server health check failed: " + "; ".join(failures))
        models = next(iter(listed.values()))
        if not models:
            raise EngineError(f"{self.servers[0].base_url} serves no model")
        entry = next((m for m in models if m["id"] == model), None) if model else models[0]
        if entry is None:
            names = ", ".join(m["id"] for m in models)
            raise EngineError(
                f"{self.servers[0].base_url} does not serve {model!r} (serves {names})"
            )
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

    def _body(self, request: Request) -> dict:
        params = request.params
        body = {
            "model": self.model,
            "prompt": request.prompt,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "return_token_ids": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.include_stop_str_in_output:
            body["include_stop_str_in_output"] = True
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
            body["return_tokens_as_token_ids"] = self._tokenizer is not None
        return body

    async def _complete(self, request: Request) -> Completion:
        body = self._body(request)
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            async with self._slots:
                server = self._pick()
                server.in_flight += 1
                try:
                    response = await self._client.post(f"{server.base_url}/completions", json=body)
                except httpx.TransportError as error:  # connection refused or reset, timeout
                    server.failed_at = time.monotonic()
                    last_error = f"{server.base_url}: {_describe(error)}"
                    continue
                finally:
                    server.in_flight -= 1
            if response.status_code == 429 or response.status_code >= 500:
                if response.status_code >= 500:
                    server.failed_at = time.monotonic()
                last_error = f"{server.base_url}: HTTP {response.status_code} {_message(response)}"
                continue
            server.failed_at = -FAILURE_COOLDOWN_S
            if response.status_code >= 400:
                raise EngineError(
                    f"{server.base_url} rejected the request: HTTP {response.status_code} "
                    f"{_message(response)}"
                )
            server.completed += 1
            try:
                return self._completion(response.json(), request)
            except (KeyError, TypeError, ValueError) as error:
                raise EngineError(
                    f"{server.base_url} sent an unreadable completion: {error!r}"
                ) from error
        LOG.warning("giving up on a request after %d attempts: %s", self.retries + 1, last_error)
        raise EngineError(
            f"no server answered after {self.retries + 1} attempts; last: {last_error}"
        )

    def _pick(self) -> _Server:
        """Not recently failed first, then least busy, ties taken in turn."""
        self._turn += 1
        count = len(self.servers)
        order = {id(s): (i - self._turn) % count for i, s in enumerate(self.servers)}
        return min(self.servers, key=lambda s: (s.failing, s.in_flight, order[id(s)]))

    def _completion(self, payload: dict, request: Request) -> Completion:
        usage = payload.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        choices = sorted(payload["choices"], key=lambda c: c["index"])
        if len(choices) != request.params.n:
            raise ValueError(f"asked for {request.params.n} samples, got {len(choices)}")
        samples = [self._sample(choice, request) for choice in choices]
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = len(choices[0].get("prompt_token_ids") or [])
        return Completion(samples, prompt_tokens, details.get("cached_tokens"))

    def _sample(self, choice: dict, request: Request) -> Sample:
        token_ids = choice.get("token_ids")
        if token_ids is None:  # a server without vLLM's return_token_ids
            token_ids = self.tokenizer.encode(choice["text"], add_special_tokens=False)
        logprobs = None
        if request.params.logprobs is not None and choice.get("logprobs"):
            logprobs = self._positions(choice["logprobs"], token_ids, request.params.logprobs)
        finish = choice["finish_reason"]
        if finish not in ("stop", "length"):
            raise ValueError(f"finish_reason {finish!r}")
        return Sample(choice["text"], list(token_ids), finish, choice.get("stop_reason"), logprobs)

    def _positions(self, logprobs: dict, token_ids: list[int], k: int) -> list[PositionLogprobs]:
        def entry(token: str, logprob: float) -> TokenLogprob:
            if token.startswith(_TOKEN_ID_PREFIX) and self._tokenizer is not None:
                token_id = int(token.removeprefix(_TOKEN_ID_PREFIX))
                return TokenLogprob(self._tokenizer.decode([token_id]), logprob, token_id)
            return TokenLogprob(token, logprob, None)

        positions = []
        for index, (token, logprob, top) in enumerate(
            zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])
        ):
            chosen = entry(token, logprob)
            if chosen.token_id is None and index < len(token_ids):
                chosen = TokenLogprob(chosen.token, chosen.logprob, token_ids[index])
            ranked = sorted((top or {}).items(), key=lambda item: -item[1])[:k]
            positions.append(PositionLogprobs(chosen, [entry(t, lp) for t, lp in ranked]))
        return positions

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _message(response: httpx.Response) -> str:
    """The server's error text, short (bodies of 4xx/5xx answers from vLLM are JSON)."""
    try:
        payload = response.json()
        error = payload.get("error", payload)
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        text = response.text
    return text[:500]
