"""Helpers for testing genprm and code built on it; the library itself never imports them.

- :mod:`.scripted`: ``ScriptedEngine``, an engine that answers with fixed texts and
  log-probabilities (exact text for tests, in addition to tests on a real engine);
- :mod:`.contract`: the behaviour checks every engine passes;
- :mod:`.local_server`: a vLLM OpenAI-compatible server on 127.0.0.1 from another environment;
- :mod:`.tokenizers`: production-family tokenizers built offline.

This repository's own test helpers (process checks, a TCP proxy, ...) are in tests/support.
"""

from .scripted import CharTokenizer, Scripted, ScriptedEngine

__all__ = ["CharTokenizer", "Scripted", "ScriptedEngine"]
