"""Behaviour every engine must show, as checks that run against a live engine.

The test suite runs them on the scripted engine, the in-process vLLM engine and the OpenAI
client against a vLLM server; an engine of your own can run them too. Each check raises
:class:`ContractViolation` (an AssertionError, raised explicitly so that ``python -O`` keeps the
checks) with what differed. Prompts should make the model write at length (32 tokens
without an end-of-sequence).

>>> from genprm.testing import ScriptedEngine
>>> story = "Once upon a time, a cat named Tom lived in a small house by the sea."
>>> run_all(ScriptedEngine(lambda prompt, i: story * 4))
"""

from __future__ import annotations

import asyncio

from genprm.backends.types import Engine, Request, SamplingParams


class ContractViolation(AssertionError):
    """An engine behaved differently from what the contract requires."""


def _require(condition, detail) -> None:
    if not condition:
        raise ContractViolation(detail)


GREEDY = SamplingParams(temperature=0.0, max_tokens=32)
PROMPTS = (
    "Write a long story about a cat who learns to sail.",
    "Describe, step by step, how to bake bread at home.",
    "Explain in detail why the sky is blue.",
)


def prompts(engine: Engine) -> list[str]:
    return [engine.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]


def check_samples(engine: Engine) -> None:
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=1)
    (completion,) = engine.generate([prompts(engine)[0]], params)
    _require(len(completion.samples) == 3, f"{len(completion.samples)} samples for n=3")
    for sample in completion.samples:
        _require(sample.finish_reason in ("stop", "length"), sample.finish_reason)
        _require(0 < len(sample.token_ids) <= 12, len(sample.token_ids))
        _require(sample.logprobs is None, "sample.logprobs is None")


def check_stop_strings(engine: Engine) -> None:
    prompt = prompts(engine)[0]
    (reference,) = engine.generate([prompt], GREEDY)
    text = reference.samples[0].text
    words = [w for w in text.split()[1:] if len(w) > 1]
    _require(words, f"the reference text has no word to stop on: {text!r}")
    stop = words[0]
    at = text.index(stop)
    kept, stripped = engine.generate(
        [
            Request(
                prompt,
                SamplingParams(
                    temperature=0.0,
                    max_tokens=32,
                    stop=(stop, "\x00"),
                    include_stop_str_in_output=True,
                ),
            ),
            Request(prompt, SamplingParams(temperature=0.0, max_tokens=32, stop=stop)),
        ]
    )
    for completion in (kept, stripped):
        sample = completion.samples[0]
        _require(sample.finish_reason == "stop", sample.finish_reason)
        _require(sample.stop_reason == stop, (sample.stop_reason, stop))
    _require(kept.samples[0].text == text[: at + len(stop)], (kept.samples[0].text, text, stop))
    _require(stripped.samples[0].text == text[:at], (stripped.samples[0].text, text, stop))
    _require(
        stripped.samples[0].token_ids == kept.samples[0].token_ids,
        "stripped.samples[0].token_ids == kept.samples[0].token_ids",
    )


def check_length(engine: Engine) -> None:
    (completion,) = engine.generate(
        [prompts(engine)[1]], SamplingParams(temperature=0.0, max_tokens=4)
    )
    sample = completion.samples[0]
    _require(sample.finish_reason == "length", sample.finish_reason)
    _require(len(sample.token_ids) == 4, sample.token_ids)
    _require(sample.stop_reason is None, "sample.stop_reason is None")


def check_logprobs(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=3)
    (completion,) = engine.generate([prompts(engine)[2]], params)
    sample = completion.samples[0]
    _require(
        sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids),
        "sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)",
    )
    for token_id, position in zip(sample.token_ids, sample.logprobs):
        _require(position.chosen.token_id == token_id, (position.chosen, token_id))
        _require(len(position.top) == 3, position.top)
        values = [entry.logprob for entry in position.top]
        _require(values == sorted(values, reverse=True), values)
        _require(all(value <= 0 for value in values), "all(value <= 0 for value in values)")
        # greedy: the chosen token is the most likely one
        _require(position.chosen.logprob >= values[0] - 1e-3, (position.chosen, position.top))
        _require(
            position.chosen.token == engine.tokenizer.decode([token_id]),
            "position.chosen.token == engine.tokenizer.decode([token_id])",
        )
    decoded = engine.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
    _require(decoded == sample.text, (decoded, sample.text))


def check_seeds(engine: Engine) -> None:
    prompt = prompts(engine)[0]

    def texts(seed: int) -> list[str]:
        params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=seed)
        return [s.text for s in engine.generate([prompt], params)[0].samples]

    first = texts(7)
    _require(texts(7) == first, "the same seed gave different samples")
    _require(texts(8) != first or len(set(first)) == 1, "different seeds gave the same samples")


def check_order(engine: Engine) -> None:
    """Mixed prompts (text and token ids, different lengths and settings) come back in order."""
    texts = prompts(engine)
    requests = []
    for index, text in enumerate(texts * 2):
        prompt = engine.tokenizer.encode(text) if index % 2 else text
        n = 1 + index % 2
        params = SamplingParams(temperature=0.0 if n == 1 else 0.7, max_tokens=index + 1, n=n)
        requests.append(Request(prompt, params))
    completions = engine.generate(requests)
    _require(len(completions) == len(requests), "len(completions) == len(requests)")
    for index, (request, completion) in enumerate(zip(requests, completions)):
        expected_prompt = request.prompt if index % 2 else engine.tokenizer.encode(request.prompt)
        _require(
            completion.prompt_tokens == len(expected_prompt), (index, completion.prompt_tokens)
        )
        _require(
            len(completion.samples) == request.params.n,
            "len(completion.samples) == request.params.n",
        )
        for sample in completion.samples:
            _require(len(sample.token_ids) == index + 1, (index, len(sample.token_ids)))


def check_async(engine: Engine) -> None:
    texts = prompts(engine)
    before = engine.counters

    async def run():
        return await asyncio.gather(*(engine.agenerate(t, GREEDY) for t in texts))

    completions = asyncio.run(run())
    for text, completion in zip(texts, completions):
        _require(
            completion.prompt_tokens == len(engine.tokenizer.encode(text)),
            "completion.prompt_tokens == len(engine.tokenizer.encode(text))",
        )
    after = engine.counters
    _require(
        after.requests - before.requests == len(texts),
        "after.requests - before.requests == len(texts)",
    )
    generated = sum(len(s.token_ids) for c in completions for s in c.samples)
    _require(
        after.generated_tokens - before.generated_tokens == generated,
        "after.generated_tokens - before.generated_tokens == generated",
    )
    prompt_tokens = sum(c.prompt_tokens for c in completions)
    _require(
        after.prompt_tokens - before.prompt_tokens == prompt_tokens,
        "after.prompt_tokens - before.prompt_tokens == prompt_tokens",
    )
    _require(after.wall_s > before.wall_s, "after.wall_s > before.wall_s")


CHECKS = {
    "samples": check_samples,
    "stop_strings": check_stop_strings,
    "length": check_length,
    "logprobs": check_logprobs,
    "seeds": check_seeds,
    "order": check_order,
    "async": check_async,
}


def run_all(engine: Engine) -> None:
    for check in CHECKS.values():
        check(engine)
