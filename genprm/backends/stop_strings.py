"""Stop strings applied on the client, as vLLM applies them, for servers that cannot do it.

Such a server is sent no stop strings; its answer is streamed and read sample by sample until
each one has finished or hit a stop string, and the stream is closed then, so the server stops
generating.
"""

from __future__ import annotations

import json

import httpx

from .types import SamplingParams


async def read_stream(response: httpx.Response, params: SamplingParams) -> list[StreamedChoice]:
    """The choices of a streamed completion, read until every one has finished or hit a
    stop string."""
    choices = [StreamedChoice(params.stop) for _ in range(params.n)]
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


class StreamedChoice:
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
