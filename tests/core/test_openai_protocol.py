"""The openai engine against servers that implement only OpenAI's completions API, and its retry
policy.

A strict server written here (stdlib ``http.server`` on 127.0.0.1) answers like OpenAI's own
API: HTTP 400 in OpenAI's error shape for any field it does not know (vLLM's extensions
included), no ``stop_reason``, legacy log-probabilities, no ``prompt_tokens_details``, one
server-sent event per token when streaming; its texts are fixed, so stop handling can be
checked exactly. The retry policy is tested through ``httpx.MockTransport`` with the backoff's
sleep recorded.
"""

import collections
import http.server
import json
import logging
import random
import threading

import httpx
import pytest

from genprm.backends import EngineError, Request, SamplingParams, openai_transport
from genprm.backends.openai_engine import OpenAIEngine
from genprm.backends.stop_strings import find_stop
from genprm.testing import contract

OPENAI_FIELDS = {
    "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty",
    "best_of", "logit_bias", "user", "seed",
}  # fmt: skip
STORY = (
    "Once upon a time, a cat named Tom lived in a small house by the sea. He loved the "
    "water and watched the boats sail past every morning. "
) * 3
CODE = (
    "Step 1 says 2 + 3 = 5. Let me check it with code.\n```python\nprint(2 + 3)\n```\n"
    "```output\n5\n```\nThe result matches.\n<output>\n**Judgement**: $\\boxed{Yes}$\n"
    "</output>\n\nThat is all."
)
JUDGE = (
    "The code printed 5, as the step claims.\n<output>\n**Judgement**: $\\boxed{Yes}$\n"
    "</output>\n\n```\nmore"
)
VERIFIER_STOPS = ("\n```\n", "</output>\n")


class StrictServer(http.server.ThreadingHTTPServer):
    """OpenAI's completions API and nothing more. A prompt in ``texts`` gets that text
    (greedy) and any other prompt the story; sampling rotates the words by seed and sample."""

    daemon_threads = True

    def __init__(self, tokenizer, model: str, texts: dict[str, str]):
        super().__init__(("127.0.0.1", 0), _StrictHandler)
        self.tokenizer, self.model, self.texts = tokenizer, model, texts
        self.bodies: list[dict] = []
        self.refusals: list[tuple[int, str]] = []
        """(position in ``bodies``, the field refused)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def sample(self, body: dict, prompt: str, index: int) -> tuple[list[int], str]:
        """The generated token ids, and the finish reason before stop strings."""
        text = self.texts.get(prompt, STORY)
        if body.get("temperature", 1.0) > 0:
            seed = body.get("seed")
            rng = random.Random(f"{seed}/{index}") if seed is not None else random.Random()
            words = text.split(" ")
            cut = rng.randrange(len(words))
            text = " ".join(words[cut:] + words[:cut])
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        max_tokens = body.get("max_tokens", 16)
        return ids[:max_tokens], "length" if len(ids) > max_tokens else "stop"

    def position(self, token_id: int, k: int) -> dict[str, float]:
        """The top-``k`` table of one token: the token itself most likely."""
        top = {self.tokenizer.decode([token_id]): -0.1}
        other = token_id
        while len(top) < k:
            other += 1
            top.setdefault(self.tokenizer.decode([other]), -1.0 - len(top))
        return top


class _StrictHandler(http.server.BaseHTTPRequestHandler):
    server: StrictServer

    def do_GET(self):
        if self.path != "/v1/models":
            return self._json(404, _openai_error("Not found"))
        self._json(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        unknown = sorted(set(body) - OPENAI_FIELDS)
        if unknown:
            self.server.refusals.append((len(self.server.bodies) - 1, unknown[0]))
            message = f"Unrecognized request argument supplied: {unknown[0]}"
            return self._json(400, _openai_error(message))
        prompt = body["prompt"]
        prompt_ids = prompt if isinstance(prompt, list) else self.server.tokenizer.encode(prompt)
        text = self.server.tokenizer.decode(prompt_ids)
        samples = [self._steps(body, text, i) for i in range(body.get("n", 1))]
        if body.get("stream"):
            return self._stream(samples)
        choices = []
        for index, (steps, finish) in enumerate(samples):
            choices.append(
                {
                    "index": index,
                    "text": "".join(piece for piece, _ in steps),
                    "logprobs": _legacy(steps) if "logprobs" in body else None,
                    "finish_reason": finish,
                }
            )
        generated = sum(len(steps) for steps, _ in samples)
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": generated,
            "total_tokens": len(prompt_ids) + generated,
        }
        self._json(200, {"object": "text_completion", "choices": choices, "usage": usage})

    def _steps(self, body: dict, prompt: str, index: int):
        """The (text, log-probabilities or None) of each generated token, and the finish
        reason. ``stop`` is not applied: the engine must not send it here (see the tests)."""
        ids, finish = self.server.sample(body, prompt, index)
        steps = []
        for token_id in ids:
            piece = self.server.tokenizer.decode([token_id])
            top = self.server.position(token_id, body["logprobs"]) if "logprobs" in body else None
            steps.append((piece, top))
        return steps, finish

    def _stream(self, samples):
        """One event per token, the samples' tokens interleaved, then [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for position in range(max(len(steps) for steps, _ in samples)):
                for index, (steps, finish) in enumerate(samples):
                    if position < len(steps):
                        piece, top = steps[position]
                        last = position == len(steps) - 1
                        choice = {
                            "index": index,
                            "text": piece,
                            "logprobs": _legacy([(piece, top)]) if top else None,
                            "finish_reason": finish if last else None,
                        }
                        self._event({"object": "text_completion", "choices": [choice]})
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client closed the stream at a stop string

    def _event(self, payload: dict):
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _openai_error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip


def _legacy(positions: list[tuple[str, dict]]) -> dict:
    """Log-probabilities in the legacy completions shape."""
    return {
        "tokens": [piece for piece, _ in positions],
        "token_logprobs": [-0.1] * len(positions),
        "top_logprobs": [top for _, top in positions],
        "text_offset": [0] * len(positions),
    }


def vllm_stop(tokenizer, text: str, stop: tuple[str, ...], keep: bool):
    """What vLLM gives for ``text`` with ``stop``: token by token, the first stop string to
    end wins; (text, token ids through the completing token, stop_reason)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for end in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:end])
        hits = [(decoded.index(s) + len(s), n) for n, s in enumerate(stop) if s in decoded]
        if hits:
            stop_end, n = min(hits)
            cut = stop_end if keep else stop_end - len(stop[n])
            return decoded[:cut], ids[:end], stop[n]
    raise AssertionError(f"no stop string in {text!r}")


@pytest.fixture
def strict(smollm2_path, smollm2_tokenizer):
    server = StrictServer(smollm2_tokenizer, str(smollm2_path), {"code": CODE, "judge": JUDGE})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def strict_engine(smollm2_path, smollm2_tokenizer):
    server = StrictServer(smollm2_tokenizer, str(smollm2_path), {})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with OpenAIEngine(server.base_url) as engine:
        yield engine
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
def test_contract_on_a_strict_openai_server(strict_engine, check):
    contract.CHECKS[check](strict_engine)


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "stripped"])
@pytest.mark.parametrize("stop", [VERIFIER_STOPS, VERIFIER_STOPS[::-1], ("Judgement**",)])
def test_stop_strings_come_out_as_vllm_gives_them(strict, smollm2_tokenizer, stop, keep):
    params = SamplingParams(
        temperature=0.0, max_tokens=100, stop=stop, include_stop_str_in_output=keep
    )
    with OpenAIEngine(strict.base_url) as engine:
        code, judge = engine.generate([Request("code", params), Request("judge", params)])
    for completion, text in ((code, CODE), (judge, JUDGE)):
        sample = completion.samples[0]
        expected_text, expected_ids, expected_stop = vllm_stop(smollm2_tokenizer, text, stop, keep)
        assert (sample.text, sample.stop_reason) == (expected_text, expected_stop)
        assert sample.finish_reason == "stop"
        assert sample.token_ids == expected_ids
    if stop != ("Judgement**",):  # which verifier stop string ended each sample
        assert code.samples[0].stop_reason == "\n```\n"
        assert judge.samples[0].stop_reason == "</output>\n"
        assert code.samples[0].text.endswith("print(2 + 3)" + ("\n```\n" if keep else ""))
    # the stop strings were applied here, over a stream, not by the server
    streamed = [b for b in strict.bodies if b.get("stream")]
    assert len(streamed) == 2 and not any("stop" in b for b in streamed)


def test_n_streamed_samples_stop_each_on_its_own_stop_string(strict, smollm2_tokenizer):
    params = SamplingParams(
        n=4, temperature=1.0, max_tokens=100, stop=VERIFIER_STOPS,
        include_stop_str_in_output=True, seed=3, logprobs=2,
    )  # fmt: skip
    with OpenAIEngine(strict.base_url) as engine:
        (completion,) = engine.generate([Request("code", params)])
    body = {"temperature": 1.0, "seed": 3, "max_tokens": 100}
    for index, sample in enumerate(completion.samples):
        text = smollm2_tokenizer.decode(strict.sample(body, "code", index)[0])
        expected_text, expected_ids, expected_stop = vllm_stop(
            smollm2_tokenizer, text, VERIFIER_STOPS, keep=True
        )
        assert (sample.text, sample.token_ids) == (expected_text, expected_ids)
        assert (sample.finish_reason, sample.stop_reason) == ("stop", expected_stop)
        assert [p.chosen.token_id for p in sample.logprobs] == sample.token_ids
    assert {s.stop_reason for s in completion.samples} == set(VERIFIER_STOPS)


def test_token_ids_and_usage_come_from_the_local_tokenizer(strict, smollm2_tokenizer):
    prompt = "Tell me a story."
    with OpenAIEngine(strict.base_url) as engine:
        (completion,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=9))
    sample = completion.samples[0]
    assert sample.token_ids == smollm2_tokenizer.encode(STORY, add_special_tokens=False)[:9]
    assert sample.text == smollm2_tokenizer.decode(sample.token_ids)
    assert completion.prompt_tokens == len(smollm2_tokenizer.encode(prompt))
    assert completion.cached_prompt_tokens is None  # no usage.prompt_tokens_details


def test_each_refused_field_is_asked_about_once_per_server(strict):
    params = SamplingParams(temperature=0.0, max_tokens=6, stop=("boats",), logprobs=1, seed=1)
    with OpenAIEngine(strict.base_url) as engine:
        engine.generate([f"prompt {i}" for i in range(12)], params)
        engine.generate(["again"], SamplingParams(max_tokens=3))
    refused = collections.Counter(field for _, field in strict.refusals)
    assert refused == {
        "include_stop_str_in_output": 1,
        "return_token_ids": 1,
        "return_tokens_as_token_ids": 1,
    }
    for position, field in strict.refusals:
        assert not any(field in body for body in strict.bodies[position + 1 :]), field


def test_a_setting_that_cannot_be_honoured_is_warned_about_once(strict, caplog):
    caplog.set_level(logging.WARNING, logger="genprm.backends.openai_engine")
    params = SamplingParams(temperature=0.8, top_k=20, max_tokens=4, seed=0)
    with OpenAIEngine(strict.base_url) as engine:
        engine.generate(["a", "b"], params)
        engine.generate(["a"], params)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{strict.base_url} does not support top_k: top_k=20 is ignored"]
    (refused_at,) = [position for position, field in strict.refusals if field == "top_k"]
    later = strict.bodies[refused_at + 1 :]
    assert len(later) >= 3 and all("top_k" not in b and b["seed"] == 0 for b in later)


# -- the retry policy, through httpx.MockTransport -----------------------------------------


class Servers:
    """Mock servers by host: each lists the model ``m`` and answers completions from its script
    (responses, or exceptions to raise), then with ``DONE``."""

    def __init__(self, **scripts):
        self.scripts = {host: list(script) for host, script in scripts.items()}
        self.models = {host: ["m"] for host in scripts}
        self.calls: list[tuple[str, dict]] = []

    def urls(self) -> list[str]:
        return [f"http://{host}/v1" for host in self.scripts]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": m} for m in self.models[host]]})
        self.calls.append((host, json.loads(request.content)))
        answer = self.scripts[host].pop(0) if self.scripts[host] else DONE
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


DONE = httpx.Response(
    200,
    json={
        "choices": [{"index": 0, "text": " done", "token_ids": [7, 8], "finish_reason": "length",
                     "stop_reason": None}],
        "usage": {"prompt_tokens": 3},
    },
)  # fmt: skip


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(openai_transport, "_sleep", sleep)
    return slept


def engine_for(servers: Servers, **options) -> OpenAIEngine:
    options = {"retries": 5, "backoff_s": 1.0, "max_backoff_s": 8.0, **options}
    return OpenAIEngine(servers.urls(), transport=httpx.MockTransport(servers), **options)


def error(status: int, message: str, **headers) -> httpx.Response:
    return httpx.Response(status, json=_openai_error(message), headers=headers)


def test_429_and_5xx_are_retried_with_exponential_backoff(sleeps):
    servers = Servers(a=[error(429, "slow down"), error(500, "oops"), error(503, "busy")])
    with engine_for(servers) as engine:
        (completion,) = engine.generate(["p"], SamplingParams(max_tokens=2))
    assert completion.samples[0].token_ids == [7, 8]
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(servers.calls) == 4


def test_retries_stop_after_the_last_attempt_with_the_last_error(sleeps):
    servers = Servers(a=[error(502, f"bad gateway {i}") for i in range(10)])
    options = {"retries": 4, "max_backoff_s": 5.0}
    with engine_for(servers, **options) as engine, pytest.raises(EngineError) as caught:
        engine.generate(["p"])
    assert len(servers.calls) == 5
    assert sleeps == [1.0, 2.0, 4.0, 5.0]
    cause = str(caught.value.__cause__)
    assert "no server answered after 5 attempts" in cause
    assert "http://a/v1: HTTP 502 bad gateway 4" in cause


def test_retry_after_is_honoured_up_to_the_longest_backoff(sleeps):
    servers = Servers(a=[error(429, "later", **{"Retry-After": "3"}),
                         error(503, "later", **{"Retry-After": "120"})])  # fmt: skip
    with engine_for(servers) as engine:
        engine.generate(["p"])
    assert sleeps == [3.0, 8.0]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "This model's maximum context length is 2048 tokens."),
        (400, "top_k must be -1 (disable), or at least 1, got 0."),  # names a field, not unknown
        (401, "Incorrect API key provided"),
        (404, "The model `m` does not exist"),
    ],
)
def test_other_4xx_fail_at_once_naming_the_server(sleeps, status, message):
    servers = Servers(a=[error(status, message)])
    with engine_for(servers) as engine, pytest.raises(EngineError) as caught:
        engine.generate(["p"], SamplingParams(top_k=5))
    assert f"http://a/v1 rejected the request: HTTP {status} {message}" in str(caught.value)
    assert len(servers.calls) == 1 and sleeps == []


def test_transport_errors_are_retried(sleeps):
    servers = Servers(a=[httpx.ConnectError("refused"), httpx.ReadTimeout("timed out")])
    with engine_for(servers) as engine:
        engine.generate(["p"])
    assert sleeps == [1.0, 2.0]
    assert len(servers.calls) == 3


def test_a_failing_server_is_passed_over_for_the_other(sleeps):
    servers = Servers(bad=[httpx.ConnectError("refused")] * 10, good=[])
    with engine_for(servers) as engine:
        completions = [engine.generate([f"p{i}"])[0] for i in range(4)]
        assert engine.requests_per_server() == {"http://bad/v1": 0, "http://good/v1": 4}
    assert all(c.samples[0].token_ids == [7, 8] for c in completions)
    assert [host for host, _ in servers.calls].count("bad") == 1
    assert sleeps == [1.0]


def test_a_field_refused_in_pydantic_shape_is_dropped_without_backoff(sleeps, caplog):
    detail = {
        "type": "extra_forbidden",
        "loc": ["body", "top_k"],
        "msg": "Extra inputs are not permitted",
    }
    refusal = httpx.Response(422, json={"detail": [detail]})
    servers = Servers(a=[refusal])
    with engine_for(servers) as engine:
        engine.generate(["p", "q"], SamplingParams(top_k=5))
    assert ["top_k" in body for _, body in servers.calls] == [True, False, False]
    assert sleeps == []
    assert "top_k=5 is ignored" in caplog.text


def test_a_server_that_accepts_but_ignores_stop_reason_gets_client_side_stops(
    sleeps, smollm2_tokenizer, smollm2_path
):
    """A lenient server takes every field but answers without ``stop_reason``: the request is
    asked again as a stream, and so is every later one with stop strings."""
    ids = smollm2_tokenizer.encode("The answer is 5.\n</output>\nmore")
    # three tokens an event: the one that completes the stop string comes with the next one
    pieces = [smollm2_tokenizer.decode(ids[i : i + 3]) for i in range(0, len(ids), 3)]
    events = "".join(
        f"data: {json.dumps({'choices': [{'index': 0, 'text': p, 'finish_reason': None}]})}\n\n"
        for p in pieces
    )
    stream = httpx.Response(200, text=events + "data: [DONE]\n\n")
    choice = {"index": 0, "text": "The answer is 5.\n", "finish_reason": "stop"}
    servers = Servers(a=[httpx.Response(200, json={"choices": [choice]}), stream, stream])
    kept = SamplingParams(stop="</output>\n", include_stop_str_in_output=True, max_tokens=50)
    stripped = SamplingParams(stop="</output>\n", max_tokens=50)
    with engine_for(servers, tokenizer=str(smollm2_path)) as engine:
        (first,), (second,) = (engine.generate(["p"], p)[0].samples for p in (kept, stripped))
    assert (first.text, first.stop_reason) == ("The answer is 5.\n</output>\n", "</output>\n")
    assert (second.text, second.stop_reason) == ("The answer is 5.\n", "</output>\n")
    assert first.token_ids == second.token_ids == smollm2_tokenizer.encode(first.text)
    assert [body.get("stream", False) for _, body in servers.calls] == [False, True, True]


def test_a_stripped_stop_strings_tokens_are_counted_without_server_token_ids(
    sleeps, smollm2_tokenizer, smollm2_path
):
    choice = {"index": 0, "text": "Yes", "finish_reason": "stop", "stop_reason": "</output>\n"}
    servers = Servers(a=[httpx.Response(200, json={"choices": [choice]})])
    params = SamplingParams(stop="</output>\n")
    with engine_for(servers, tokenizer=str(smollm2_path)) as engine:
        (completion,) = engine.generate(["p"], params)
    assert completion.samples[0].token_ids == smollm2_tokenizer.encode("Yes</output>\n")
    assert completion.prompt_tokens == len(smollm2_tokenizer.encode("p"))  # no usage


def test_find_stop_takes_the_stop_string_that_ends_first_in_the_new_text():
    assert find_stop("xabcd", 4, ("abcd", "bc")) == ("bc", (2, 4))
    assert find_stop("xab", 2, ("ab", "b")) == ("ab", (1, 3))  # a tie: the list's order
    assert find_stop("ab--", 2, ("ab",)) is None  # ended before the new text
    assert find_stop("ab--", 3, ("ab",)) == ("ab", (0, 2))


def test_every_server_must_serve_the_model(sleeps):
    servers = Servers(a=[], b=[])
    servers.models["b"] = ["other"]
    with pytest.raises(EngineError, match=r"^http://b/v1 does not serve 'm' \(serves other\)$"):
        engine_for(servers)
    with pytest.raises(EngineError) as caught:
        engine_for(servers, model="other")
    assert str(caught.value) == "http://a/v1 does not serve 'other' (serves m)"
    servers.models["a"] = []
    with pytest.raises(EngineError, match="http://a/v1 serves no model"):
        engine_for(servers)
