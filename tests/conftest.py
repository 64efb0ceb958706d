"""Shared fixtures (a module's sandbox, the embedded model's tokenizer, the Qwen2.5 tokenizer,
ProcessBench rows, the session's vLLM servers) and the requirement markers.

A test marked ``root``, ``bwrap``, ``vllm`` or ``vllm_server`` is skipped, with the reason, where
that requirement is missing. Under CI (``$CI`` set) a missing requirement fails the test instead:
CI has everything, and a skip there would hide a feature that never ran.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO, SHARED_DATA

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("GENPRM_CACHE_DIR", str(REPO / ".cache" / "genprm"))

VLLM_PYTHON = os.environ.get("GENPRM_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))


def _has_vllm(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


@functools.cache
def missing(requirement: str) -> str | None:
    """Why ``requirement`` (a marker name) is not met here, or None when it is."""
    if requirement == "root":
        return None if os.geteuid() == 0 else "needs root (snippets run under dedicated uids)"
    if requirement == "bwrap":
        if shutil.which("bwrap"):
            return None
        return "needs bubblewrap (apt-get install bubblewrap; `make test` installs it as root)"
    if requirement == "vllm":
        return None if _has_vllm(sys.executable) else "needs vllm here: run it with .venv-vllm"
    if requirement == "vllm_server":
        if os.path.isfile(VLLM_PYTHON) and _has_vllm(VLLM_PYTHON):
            return None
        return (
            f"needs a Python with vllm to start servers: {VLLM_PYTHON} "
            "(`make venv-vllm`, or set GENPRM_VLLM_PYTHON)"
        )
    raise ValueError(f"unknown requirement {requirement!r}")


REQUIREMENTS = ("root", "bwrap", "vllm", "vllm_server")


def pytest_runtest_setup(item):
    for requirement in REQUIREMENTS:
        if item.get_closest_marker(requirement) and (reason := missing(requirement)):
            if os.environ.get("CI"):
                pytest.fail(f"CI must run every test: {reason}", pytrace=False)
            pytest.skip(reason)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sandbox(request):
    """One sandbox for the whole test module: ``Sandbox()`` (two workers, a 5 s timeout), or
    with the keywords of the module's ``sandbox`` marker
    (``pytestmark = pytest.mark.sandbox(workers=1)``)."""
    from genprm.sandbox import Sandbox

    marker = request.node.get_closest_marker("sandbox")
    with Sandbox(**(marker.kwargs if marker else {})) as shared:
        yield shared


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The generation environment's Python, which starts vLLM servers for tests."""
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from genprm.models import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from genprm.testing.tokenizers import qwen25_tokenizer

    return qwen25_tokenizer()


@pytest.fixture(scope="session", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    return request.getfixturevalue(
        "smollm2_tokenizer" if request.param == "smollm2" else "qwen_tokenizer"
    )


@pytest.fixture(scope="session")
def processbench_gsm8k() -> list[dict]:
    return read_jsonl(SHARED_DATA / "processbench" / "gsm8k.jsonl")


def _wandb_records(path: Path) -> list[bytes]:
    """Payloads of a W&B ``.wandb`` transaction log: a 7-byte header, then LevelDB-style
    32 KiB blocks of records (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data, block, pos = path.read_bytes(), 32768, 7
    payloads, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    return payloads


@pytest.fixture(scope="session")
def read_wandb_run():
    """Read an offline W&B run folder: ``(history: {key: [values]}, summary: {key: value})``.
    wandb 0.31 writes offline runs only to its binary log (no wandb-summary.json)."""
    from wandb.proto import wandb_internal_pb2

    def records(run_dir: Path, timeout_s: float = 10.0) -> list:
        # wandb's writer is a separate process: give it a moment to write the run's final
        # "exit" record (GenPRMPlugin finishes the run before axolotl exits).
        deadline = time.monotonic() + timeout_s
        while True:
            parsed = []
            for payload in _wandb_records(next(Path(run_dir).glob("*.wandb"))):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(payload)
                parsed.append(record)
            if any(r.WhichOneof("record_type") == "exit" for r in parsed):
                return parsed
            if time.monotonic() > deadline:
                raise AssertionError(f"the W&B run in {run_dir} was not finished in {timeout_s} s")
            time.sleep(0.5)

    def read(run_dir: Path) -> tuple[dict, dict]:
        history, summary = {}, {}
        for record in records(run_dir):
            kind = record.WhichOneof("record_type")
            items = (
                record.history.item
                if kind == "history"
                else record.summary.update
                if kind == "summary"
                else []
            )
            for item in items:
                key, value = item.key or "/".join(item.nested_key), json.loads(item.value_json)
                if kind == "history":
                    history.setdefault(key, []).append(value)
                else:
                    summary[key] = value
        return history, summary

    return read


# The session's two vLLM servers (the embedded model; an API key), shared by every test module
# that talks to a server: one start per test session.
VLLM_API_KEY = "sk-genprm-test-0c1d2e3f"
VLLM_SERVER_ARGS = (
    "--enforce-eager",
    "--dtype",
    "float32",
    "--max-model-len",
    "2048",
    "--enable-prefix-caching",
    "--enable-prompt-tokens-details",
    "--api-key",
    VLLM_API_KEY,
)


@pytest.fixture(scope="session")
def vllm_servers(vllm_python, smollm2_path, tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    from genprm.testing.local_server import LocalVLLMServer

    logs = tmp_path_factory.mktemp("vllm-logs")
    pair = [
        LocalVLLMServer(
            vllm_python, str(smollm2_path), extra_args=VLLM_SERVER_ARGS, log_path=logs / f"{i}.log"
        )
        for i in range(2)
    ]
    try:
        with ThreadPoolExecutor(2) as starter:
            list(starter.map(LocalVLLMServer.start, pair))
        yield pair
    finally:
        for server in pair:
            server.stop()


@pytest.fixture(scope="session")
def vllm_api_key():
    """The servers' API key, in OPENAI_API_KEY (where the openai engine looks) for the session."""
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = VLLM_API_KEY
    yield VLLM_API_KEY
    if previous is None:
        del os.environ["OPENAI_API_KEY"]
    else:
        os.environ["OPENAI_API_KEY"] = previous
