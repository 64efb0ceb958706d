"""``genprm-generate``: sample completions for prompts with any engine, JSONL in and out.

    genprm-generate --engine vllm --prompt "What is 2+3?" --chat --n 2 --max-tokens 64
    genprm-generate --engine openai --base-url http://127.0.0.1:8000/v1 \\
        --input prompts.jsonl --output completions.jsonl

Input lines hold ``{"prompt": "..."}`` (sent as is) or ``{"messages": [...]}`` (rendered with
the model's chat template). Output lines, in input order, hold the index, the prompt and the
samples. Results are written a batch at a time; a rerun after a crash continues after the last
complete line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .backends import EngineError, SamplingParams
from .cli import add_engine_arguments, engine_from_args


class InputError(ValueError):
    pass


def read_prompts(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not (
                isinstance(row.get("prompt"), str) or isinstance(row.get("messages"), list)
            ):
                raise InputError(f'{path}:{number}: needs "prompt" (a string) or "messages"')
            rows.append(row)
    return rows


def completed_lines(path: Path) -> int:
    """Complete lines already in ``path``; a torn last line is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        path.write_bytes(keep)
    return keep.count(b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genprm-generate", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    source.add_argument("--input", type=Path, help="JSONL of prompts")
    parser.add_argument("--chat", action="store_true", help="--prompt is a user message")
    parser.add_argument("--output", type=Path, help="JSONL to write (default: stdout)")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--stop", action="append", default=[])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int, default=256)
    add_engine_arguments(parser)
    args = parser.parse_args(argv)

    try:
        if args.input:
            rows = read_prompts(args.input)
        elif args.chat:
            rows = [{"messages": [{"role": "user", "content": p}]} for p in args.prompt]
        else:
            rows = [{"prompt": p} for p in args.prompt]
    except (OSError, InputError) as error:
        print(f"genprm-generate: {error}", file=sys.stderr)
        return 2
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    done = completed_lines(args.output) if args.output else 0
    if done:
        print(f"genprm-generate: {done} of {len(rows)} already in {args.output}", file=sys.stderr)
    # vLLM logs to stdout by default, which here carries the results.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        engine = engine_from_args(parser, args)
    except EngineError as error:
        print(f"genprm-generate: {error}", file=sys.stderr)
        return 1
    started = time.monotonic()
    out = args.output.open("a", encoding="utf-8") if args.output else sys.stdout
    try:
        for start in range(done, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            prompts = [
                row["prompt"] if "prompt" in row else engine.apply_chat_template(row["messages"])
                for row in batch
            ]
            for offset, (prompt, completion) in enumerate(
                zip(prompts, engine.generate(prompts, params))
            ):
                record = {
                    "index": start + offset,
                    "prompt": prompt,
                    "samples": [
                        {
                            "text": s.text,
                            "finish_reason": s.finish_reason,
                            "tokens": len(s.token_ids),
                        }
                        for s in completion.samples
                    ],
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    except EngineError as error:
        print(f"genprm-generate: {error} (rerun to continue after the last line)", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
        counters = engine.counters
        engine.close()
    print(
        f"genprm-generate: {counters.requests} prompts, {counters.generated_tokens} tokens in "
        f"{time.monotonic() - started:.1f} s ({counters.generated_tokens_per_s:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
