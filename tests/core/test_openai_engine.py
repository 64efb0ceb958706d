"""The OpenAI-compatible client against real vLLM servers on 127.0.0.1.

The servers run in the generation environment (.venv-vllm, $GENPRM_VLLM_PYTHON); this test runs
in the training environment, as a user's pipeline would: the two meet over HTTP.
"""

import http.server
import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from genprm.backends import EngineError, Request, SamplingParams, make_engine, openai_engine
from genprm.testing import contract
from genprm.testing.local_server import free_port

pytestmark = pytest.mark.vllm_server


@pytest.fixture(scope="module")
def servers(vllm_servers):
    return vllm_servers


@pytest.fixture(scope="module")
def api_key_in_env(vllm_api_key):
    return vllm_api_key


@pytest.fixture(scope="module")
def engine(servers, api_key_in_env):
    engine = make_engine("openai", base_urls=[servers[0].base_url])
    yield engine
    engine.close()


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
def test_contract(engine, check):
    contract.CHECKS[check](engine)


def test_a_vllm_server_is_sent_its_extensions_and_nothing_is_emulated(engine):
    params = SamplingParams(
        temperature=0.5, top_k=5, seed=1, max_tokens=8, stop=("\n",), logprobs=2,
        include_stop_str_in_output=True,
    )  # fmt: skip
    engine.generate(["Count: 1, 2, 3,"], params)
    (server,) = engine.servers
    assert server.unsupported == set() and server.reports_stop_reason
    assert server.accepted == set(openai_engine.OPTIONAL_FIELDS)


def test_model_and_tokenizer_come_from_the_server(engine, smollm2_path):
    assert engine.model == str(smollm2_path)
    assert engine.tokenizer.name_or_path == str(smollm2_path)


def test_prefix_cache_hits_are_reported(engine):
    long = "the quick brown fox jumps over the lazy dog " * 40
    prompt = engine.apply_chat_template([{"role": "user", "content": "Repeat: " + long}])
    engine.generate([prompt], SamplingParams(max_tokens=2))
    (again,) = engine.generate([prompt + " And"], SamplingParams(max_tokens=2))
    assert again.cached_prompt_tokens >= 256, again.cached_prompt_tokens


def test_the_api_key_is_sent_and_never_logged(servers, api_key_in_env, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GENPRM_WRONG_KEY", "sk-wrong-key-9a8b")
    with pytest.raises(EngineError, match=re.escape(servers[0].base_url)) as caught:
        make_engine("openai", base_urls=[servers[0].base_url], api_key_env="GENPRM_WRONG_KEY")
    assert "401" in str(caught.value)
    assert "sk-wrong-key-9a8b" not in str(caught.value)
    with make_engine("openai", base_urls=[servers[0].base_url]) as engine:
        engine.generate(["Hello"], SamplingParams(max_tokens=2))
    assert api_key_in_env not in caplog.text and "sk-wrong-key-9a8b" not in caplog.text


def test_health_check_names_the_server_that_is_down(servers, api_key_in_env):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=f"health check failed: {re.escape(dead)}"):
        make_engine("openai", base_urls=[servers[0].base_url, dead])


def metric(server, name: str, **labels) -> float:
    """The sum of a Prometheus counter on ``server``'s /metrics over series with ``labels``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
    total = 0.0
    pattern = rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$"
    for series, value in re.findall(pattern, text, re.MULTILINE):
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


def test_a_4xx_answer_fails_at_once_with_the_servers_message(engine, servers):
    too_long = [42] * 3000  # over --max-model-len
    rejected = {"handler": "/v1/completions", "status": "4xx"}
    before = metric(servers[0], "http_requests_total", **rejected)
    with pytest.raises(EngineError) as caught:
        engine.generate([Request(too_long, SamplingParams(max_tokens=2))])
    message = str(caught.value)
    assert f"{servers[0].base_url} rejected the request: HTTP 400" in message
    assert "maximum context length" in message or "2048" in message
    assert metric(servers[0], "http_requests_total", **rejected) == before + 1, "not retried"


def test_two_servers_share_the_requests(servers, api_key_in_env):
    with make_engine("openai", base_urls=[s.base_url for s in servers]) as engine:
        prompts = contract.prompts(engine)
        engine.generate(prompts * 4, SamplingParams(temperature=0.0, max_tokens=4))
        per_server = engine.requests_per_server()
    assert sorted(per_server) == sorted(s.base_url for s in servers)
    assert all(count >= 3 for count in per_server.values()), per_server
    for server in servers:  # the servers' own count agrees that both did work
        assert metric(server, "vllm:request_success_total") >= per_server[server.base_url]


def test_generate_cli_resumes_after_a_crash(servers, api_key_in_env, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "The capital of France is"},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    rows.append({"prompt": "1, 2, 3,"})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    command = [
        sys.executable, "-m", "genprm.generate", "--engine", "openai",
        "--base-url", servers[0].base_url, "--input", str(prompts), "--output", str(output),
        "--max-tokens", "4", "--temperature", "0", "--batch-size", "1",
    ]  # fmt: skip
    first = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    lines = output.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1])["prompt"].endswith("<|im_start|>assistant\n")
    # a crash after the first line, in the middle of writing the second
    output.write_text(lines[0] + "\n" + lines[1][:10])
    second = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "1 of 3 already" in second.stderr
    assert output.read_text().splitlines() == lines


def test_a_server_crash_mid_batch_loses_no_finished_result(servers, api_key_in_env):
    server = servers[0]
    engine = make_engine(
        "openai", base_urls=[server.base_url], max_concurrency=2, retries=2, backoff_s=0.2
    )
    prompts = contract.prompts(engine)
    requests = [
        Request(prompts[i % 3], SamplingParams(temperature=0.0, max_tokens=24 + i))
        for i in range(12)
    ]

    def crash_after_two():
        while engine.counters.requests < 2:
            time.sleep(0.05)
        server.kill()

    crasher = threading.Thread(target=crash_after_two)
    crasher.start()
    try:
        with pytest.raises(EngineError) as caught:
            engine.generate(requests)
        crasher.join()
        error = caught.value
        finished = [i for i, r in enumerate(error.results) if r is not None]
        assert len(finished) >= 2 and error.pending
        assert "no server answered after 3 attempts" in str(error.__cause__)
        assert server.base_url in str(error.__cause__)
        server.start()  # the same port again
        rest = engine.generate([requests[i] for i in error.pending])
        results = list(error.results)
        for index, completion in zip(error.pending, rest):
            results[index] = completion
        assert all(len(r.samples[0].token_ids) >= 1 for r in results)
    finally:
        crasher.join()
        engine.close()


class _Failing(http.server.BaseHTTPRequestHandler):
    """Lists the model like a vLLM server, then answers every completion with HTTP 503."""

    completions = 0

    def do_GET(self):
        body = json.dumps({"data": [{"id": self.server.model, "root": self.server.model}]})
        self._answer(200, body)

    def do_POST(self):
        type(self).completions += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(503, json.dumps({"error": {"message": "overloaded"}}))

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_a_5xx_is_retried_on_another_server_which_then_takes_the_work(servers, api_key_in_env):
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    failing.model = servers[1].model
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    flaky = f"http://127.0.0.1:{failing.server_address[1]}/v1"
    try:
        with make_engine(
            "openai", base_urls=[flaky, servers[1].base_url], max_concurrency=1, backoff_s=0.05
        ) as engine:
            completions = engine.generate(
                ["One", "Two", "Three", "Four"], SamplingParams(max_tokens=2)
            )
            assert all(c.samples[0].token_ids for c in completions)
            assert engine.requests_per_server() == {flaky: 0, servers[1].base_url: 4}
        # after its first 503 the failing server is passed over while the other one is healthy
        assert 1 <= _Failing.completions <= 2, _Failing.completions
    finally:
        failing.shutdown()
