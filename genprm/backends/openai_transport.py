"""HTTP to one or many OpenAI-compatible servers: which one gets a request, retries, hung servers.

Requests go to the least busy server, at most ``max_concurrency`` times the number of
servers in flight at a time.
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (on another
server when there is one; a ``Retry-After`` answer lengthens the wait, up to ``max_backoff_s``);
other 4xx fail at once with the server's message (:class:`Rejected`). The API key is never
logged.

A request with no answer for ``timeout_s`` (of a streamed one: no new bytes) is given up and
retried. A non-streamed answer comes whole, after the whole generation, so that limit is long;
a hung server is found sooner: after ``WAIT_NOTICE_S`` without an answer the pool says so,
naming the server, and asks it for ``/v1/models``; a server that answers that neither (stopped,
cut off) is given up on at once. Every retry is logged with its server and reason.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import httpx

from .types import EngineError

LOG = logging.getLogger(__name__)
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
_sleep = asyncio.sleep  # the backoff's clock; tests replace it
T = TypeVar("T")


class Rejected(EngineError):
    """A server refused a request with an HTTP error not worth retrying (a 4xx other than 429)."""

    def __init__(self, server: Server, status: int, message: str):
        super().__init__(f"{server.base_url} rejected the request: HTTP {status} {message}")
        self.status = status
        self.message = message


class _Transient(Exception):
    """A failure worth retrying (on another server when there is one)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Server:
    """One server's address, and how it has fared: its requests in flight, its failures and
    silences."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.in_flight = 0
        self.failed_at = -FAILURE_COOLDOWN_S
        self.checking = asyncio.Lock()
        """Held while a waiting request asks whether the server still answers."""
        self.answered_at = -math.inf
        """When the server last answered: a request, or whether it still answers."""
        self.silent_at = -math.inf
        """When the server last did not answer whether it still answers."""
        self.noticed_at = -math.inf
        """When the pool last said it was waiting on this server."""

    @property
    def failing(self) -> bool:
        return time.monotonic() - self.failed_at < FAILURE_COOLDOWN_S


class ServerPool:
    """The servers behind one engine and the HTTP client that reaches them; made, used and
    closed on one event loop."""

    def __init__(
        self,
        servers: list[Server],
        *,
        api_key: str | None,
        max_concurrency: int,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
    ):
        self.servers = servers
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._turn = 0
        self._slots = asyncio.Semaphore(max_concurrency * len(servers))
        # one connection more per server: asking a busy server whether it still answers
        limits = httpx.Limits(max_connections=(max_concurrency + 1) * len(servers))
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=limits,
            transport=transport,
        )

    async def models(self) -> dict[str, dict[str, dict]]:
        """The models each server lists at ``/models`` (by id), by server URL; an EngineError
        naming every server that does not answer."""
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
        return listed

    async def call(self, attempt: Callable[[Server], Awaitable[T]]) -> T:
        """``attempt(server)`` on the server picked for it; after a transient failure, again
        (after a back-off, on the server picked then), ``retries`` times at most."""
        last_error, delay = "", 0.0
        for attempt_number in range(self.retries + 1):
            if attempt_number:
                await _sleep(delay)
            async with self._slots:
                server = self._pick()
                server.in_flight += 1
                try:
                    return await attempt(server)
                except _Transient as error:
                    last_error = f"{server.base_url}: {error}"
                    delay = self._backoff(attempt_number, error.retry_after)
                    if attempt_number < self.retries:
                        LOG.warning(
                            "waiting on %s (retry %d/%d)",
                            last_error, attempt_number + 1, self.retries,
                        )  # fmt: skip
                finally:
                    server.in_flight -= 1
        LOG.warning("giving up on a request after %d attempts: %s", self.retries + 1, last_error)
        raise EngineError(
            f"no server answered after {self.retries + 1} attempts; last: {last_error}"
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff_s * 2**attempt
        return min(max(delay, retry_after or 0.0), self.max_backoff_s)

    def _pick(self) -> Server:
        """Not recently failed first, then least busy, ties taken in turn."""
        self._turn += 1
        count = len(self.servers)
        order = {id(s): (i - self._turn) % count for i, s in enumerate(self.servers)}
        return min(self.servers, key=lambda s: (s.failing, s.in_flight, order[id(s)]))

    async def send(
        self, server: Server, body: dict, read: Callable[[httpx.Response], Awaitable[T]]
    ) -> T:
        """``read`` of the answer to ``body`` POSTed to the server's ``/completions`` (what
        ``read`` raises passes through), watched until the answer starts: the server must
        still answer."""
        answered = asyncio.Event()
        exchange = asyncio.ensure_future(self._exchange(server, body, read, answered))
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

    def _notice(self, server: Server, waited: float) -> None:
        now = time.monotonic()
        if now - server.noticed_at >= WAIT_NOTICE_S:
            server.noticed_at = now
            LOG.warning(
                "waiting on %s: no answer for %.0f s (%d requests there; one gives up after %g s)",
                server.base_url, waited, server.in_flight, self.timeout_s,
            )  # fmt: skip

    async def _answers(self, server: Server) -> bool:
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
        self,
        server: Server,
        body: dict,
        read: Callable[[httpx.Response], Awaitable[T]],
        answered: asyncio.Event,
    ) -> T:
        try:
            async with self._client.stream(
                "POST", f"{server.base_url}/completions", json=body
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._refused(server, response)
                server.failed_at = -FAILURE_COOLDOWN_S
                server.answered_at = time.monotonic()
                answered.set()
                return await read(response)
        except httpx.ReadTimeout as error:
            server.failed_at = time.monotonic()
            raise _Transient(f"ReadTimeout: no answer for {self.timeout_s:g} s") from error
        except httpx.TransportError as error:  # connection refused or reset, other timeouts
            server.failed_at = time.monotonic()
            raise _Transient(_describe(error)) from error

    def _refused(self, server: Server, response: httpx.Response) -> NoReturn:
        """Raises what an HTTP error answer means: retry, or fail (:class:`Rejected`)."""
        status, message = response.status_code, _message(response)
        if status == 429 or status >= 500:
            if status >= 500:
                server.failed_at = time.monotonic()
            raise _Transient(f"HTTP {status} {message}", _retry_after(response))
        server.failed_at = -FAILURE_COOLDOWN_S
        raise Rejected(server, status, message)

    async def aclose(self) -> None:
        await self._client.aclose()


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
