"""A scripted engine: fixed texts (and log-probabilities) for tests that need exact output.

It obeys the Engine contract of the real engines: ``n`` samples, stop strings found token by
token (kept or stripped), ``max_tokens`` cuts with ``"length"``, one logprob entry per
generated token, results in request order.

>>> engine = ScriptedEngine({"2+3=": ["5.\\nDone", "6."]})
>>> [s.text for s in engine.generate(["2+3="], SamplingParams(n=3, stop="."))[0].samples]
['5', '6', '5']
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from genprm.backends.types import (
    Completion,
    Engine,
    EngineError,
    PositionLogprobs,
    Request,
    Sample,
    SamplingParams,
    TokenLogprob,
)

CHOSEN_LOGPROB = math.log(0.9)


@dataclass(frozen=True)
class Scripted:
    """A scripted sample; ``top_logprobs`` (token text -> logprob, one dict per generated
    token, the chosen token among them) replaces the default log-probabilities."""

    text: str
    top_logprobs: list[dict[str, float]] | None = None


class CharTokenizer:
    """One token per character (id = code point) and a ChatML chat template.

    >>> CharTokenizer().encode("hi")
    [104, 105]
    """

    eos_token = "<|im_end|>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(t) for t in token_ids)

    def apply_chat_template(
        self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True
    ):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self.encode(text) if tokenize else text


Script = Mapping[str, str | Scripted | Sequence[str | Scripted]] | Callable[[str, int], str]


class ScriptedEngine(Engine):
    """Answers each prompt from ``script``: a mapping prompt text -> text(s) (samples cycle
    through the list), or a callable ``(prompt text, sample index) -> text``. Texts may be
    ``Scripted`` to fix their log-probabilities. A prompt not in the script fails its request
    with an error naming it."""

    name = "scripted"

    def __init__(self, script: Script, tokenizer=None, max_model_len: int | None = None):
        super().__init__()
        self.script = script
        self.max_model_len = max_model_len
        self._tokenizer = tokenizer or CharTokenizer()
        self.prompts: list[str] = []
        """Every prompt received, in order (for assertions)."""

    @property
    def tokenizer(self):
        return self._tokenizer

    def close(self) -> None:
        pass

    def _submit(self, request: Request) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(self._complete(request))
        except EngineError as error:
            future.set_exception(error)
        return future

    def _complete(self, request: Request) -> Completion:
        if isinstance(request.prompt, str):
            prompt, prompt_ids = request.prompt, self._tokenizer.encode(request.prompt)
        else:
            prompt, prompt_ids = self._tokenizer.decode(request.prompt), request.prompt
        self.prompts.append(prompt)
        samples = [
            self._sample(self._scripted(prompt, i), request.params) for i in range(request.params.n)
        ]
        return Completion(samples, len(prompt_ids))

    def _scripted(self, prompt: str, index: int) -> Scripted:
        if callable(self.script):
            answer = self.script(prompt, index)
        else:
            if prompt not in self.script:
                raise EngineError(f"the script has no answer for the prompt {prompt[:200]!r}")
            answer = self.script[prompt]
            if not isinstance(answer, (str, Scripted)):
                answer = answer[index % len(answer)]
        return answer if isinstance(answer, Scripted) else Scripted(answer)

    def _sample(self, scripted: Scripted, params: SamplingParams) -> Sample:
        all_ids = self._tokenizer.encode(scripted.text, add_special_tokens=False)
        text, ids, finish, stop_reason = scripted.text, all_ids, "stop", None
        for end in range(1, len(all_ids) + 1):
            decoded = self._tokenizer.decode(all_ids[:end])
            hits = [(decoded.find(s), s) for s in params.stop if s in decoded]
            if hits:
                at, stop_reason = min(hits)
                keep = len(stop_reason) if params.include_stop_str_in_output else 0
                text, ids = decoded[: at + keep], all_ids[:end]
                break
            if end == params.max_tokens and end < len(all_ids):
                text, ids, finish = decoded, all_ids[:end], "length"
                break
        logprobs = None
        if params.logprobs is not None:
            logprobs = [self._position(scripted, i, t, params.logprobs) for i, t in enumerate(ids)]
        return Sample(text, ids, finish, stop_reason, logprobs)

    def _position(self, scripted: Scripted, index: int, token_id: int, k: int) -> PositionLogprobs:
        token = self._tokenizer.decode([token_id])
        if scripted.top_logprobs is not None:
            table = scripted.top_logprobs[index]
            if token not in table:
                raise EngineError(f"scripted logprobs at token {index} lack the token {token!r}")
            ranked = sorted(table.items(), key=lambda item: -item[1])[:k]
            top = [TokenLogprob(t, lp, self._single_id(t)) for t, lp in ranked]
            return PositionLogprobs(TokenLogprob(token, table[token], token_id), top)
        chosen = TokenLogprob(token, CHOSEN_LOGPROB, token_id)
        others = [token_id + j for j in range(1, k)]
        rest = math.log(0.1 / max(k - 1, 1))
        top = [chosen] + [TokenLogprob(self._tokenizer.decode([t]), rest, t) for t in others]
        return PositionLogprobs(chosen, top[:k])

    def _single_id(self, token: str) -> int | None:
        ids = self._tokenizer.encode(token, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None
