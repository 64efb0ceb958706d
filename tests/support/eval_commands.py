"""``genprm-eval`` command lines against a local vLLM server (``vllm_servers`` in conftest.py):
the openai engine at the server's URL and one sandbox worker, run from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from eval.processbench.data import DEFAULT_DATA_DIR
from tests.support.paths import REPO

MATH500 = DEFAULT_DATA_DIR.parent / "math500" / "test.jsonl"


def eval_command(subcommand: str, server, out: Path, *flags: str) -> list[str]:
    """``python -m eval.cli SUBCOMMAND`` (this interpreter's genprm-eval) with the openai engine
    on ``server`` (a ``LocalVLLMServer``), writing to ``out``; ``flags`` follow."""
    return [
        sys.executable, "-m", "eval.cli", subcommand, "--engine", "openai",
        "--base-url", server.base_url, "--sandbox-workers", "1", "--out", str(out), *flags,
    ]  # fmt: skip


def run_eval(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``command`` run from the repository root, its output captured as text."""
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
