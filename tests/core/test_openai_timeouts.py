"""The openai engine against a server that stops answering: it says it is waiting and on which
server, gives a request up after ``timeout_s`` (``--request-timeout``) or as soon as the server
no longer answers ``/v1/models`` either, retries ``retries`` times (``--retries``), then fails
naming the server; a server that is slow but alive is waited for."""

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genprm.backends import EngineError, SamplingParams, openai_transport
from genprm.backends.openai_engine import OpenAIEngine

BIN = Path(sys.executable).parent
DONE = {
    "choices": [{"index": 0, "text": " done", "token_ids": [7, 8], "finish_reason": "length",
                 "stop_reason": None}],
    "usage": {"prompt_tokens": 3},
}  # fmt: skip


class StallingServer(http.server.ThreadingHTTPServer):
    """Lists the model ``m``; completions are answered after ``answer_after`` seconds, or
    never while it is None; with ``frozen`` set it answers nothing at all (a stopped process)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _StallingHandler)
        self.answer_after: float | None = None
        self.frozen = False
        self.released = threading.Event()
        self.completions = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    server: StallingServer

    def do_GET(self):
        if self.server.frozen:
            return self.server.released.wait()
        self._json({"data": [{"id": "m", "root": "m"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.completions += 1
        if self.server.released.wait(self.server.answer_after) or self.server.frozen:
            return
        self._json(DONE)

    def _json(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    stalling = StallingServer()
    threading.Thread(target=stalling.serve_forever, daemon=True).start()
    yield stalling
    stalling.released.set()
    stalling.shutdown()


@pytest.fixture
def quick_notices(monkeypatch):
    monkeypatch.setattr(openai_transport, "WAIT_NOTICE_S", 0.3)
    monkeypatch.setattr(openai_transport, "PROBE_TIMEOUT_S", 0.5)


def failure(engine: OpenAIEngine) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        engine.generate(["p"], SamplingParams(max_tokens=2))
    return str(caught.value.__cause__ or caught.value), time.monotonic() - started


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_request_without_an_answer_is_given_up_after_timeout_s_and_retried(
    server, quick_notices, caplog
):
    with OpenAIEngine(server.base_url, timeout_s=1.0, retries=1, backoff_s=0.1) as engine:
        message, took = failure(engine)
    last = f"{server.base_url}: ReadTimeout: no answer for 1 s"
    assert f"no server answered after 2 attempts; last: {last}" in message
    assert 2.0 <= took < 6.0 and server.completions == 2
    lines = warnings(caplog)
    assert f"waiting on {last} (retry 1/1)" in lines
    waiting = [line for line in lines if line.startswith(f"waiting on {server.base_url}: no ")]
    assert any("gives up after 1 s" in line for line in waiting), lines


def test_a_server_that_answers_nothing_is_given_up_on_before_timeout_s(server, quick_notices):
    with OpenAIEngine(server.base_url, timeout_s=60.0, retries=1, backoff_s=0.1) as engine:
        server.frozen = True
        message, took = failure(engine)
    assert f"{server.base_url}: no answer for " in message
    assert f"nor to {server.base_url}/models" in message
    assert took < 10.0


def test_a_slow_server_that_still_answers_is_waited_for(server, quick_notices, caplog):
    server.answer_after = 1.5
    with OpenAIEngine(server.base_url, timeout_s=10.0, retries=0) as engine:
        (completion,) = engine.generate(["p"], SamplingParams(max_tokens=2))
    assert completion.samples[0].token_ids == [7, 8] and server.completions == 1
    assert any(line.startswith(f"waiting on {server.base_url}: no answer for") for line in
               warnings(caplog))  # fmt: skip


def test_the_defaults_give_a_hung_server_up_within_minutes():
    defaults = OpenAIEngine.__init__.__kwdefaults__
    assert defaults["retries"] == 3
    assert openai_transport.WAIT_NOTICE_S + openai_transport.PROBE_TIMEOUT_S <= 60


def test_request_timeout_and_retries_flags_reach_the_engine(server):
    """genprm-generate --engine openai with a server that never answers: exit 1 in about
    (retries + 1) x --request-timeout, the server named, the retry line on stderr."""
    command = [str(BIN / "genprm-generate"), "--engine", "openai", "--base-url", server.base_url,
               "--request-timeout", "1", "--retries", "1", "--prompt", "p",
               "--max-tokens", "2"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    last = f"{server.base_url}: ReadTimeout: no answer for 1 s"
    assert f"waiting on {last} (retry 1/1)" in done.stderr
    assert last in done.stderr.splitlines()[-1]
    assert took < 60 and server.completions == 2
