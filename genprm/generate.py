"""``genprm-generate``: sample completions for prompts with any engine, JSONL in and out.

    genprm-generate --engine vllm --prompt "What is 2+3?" --chat --n 2 --max-tokens 64
    genprm-generate --engine openai --base-url http://127.0.0.1:8000/v1 \\
        --input prompts.jsonl --output completions.jsonl

Input lines hold ``{"prompt": "..."}`` (sent as is) or ``{"messages": [...]}`` (rendered with
the model's chat template). Output lines hold the index, the prompt and the samples; a finished
file holds every input once, in input order. Results are written a batch at a time, and the
finished results of a failed batch too: a rerun of the same command generates only what is
missing. ``OUTPUT.resume.json`` records what the output was written for (a fingerprint of the
input and the sampling settings); a rerun with another input or other settings is refused.
The output is checked (a writable file, not the input) and held by this run alone
(``OUTPUT.lock``) before the engine starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .backends import Completion, Engine, EngineError, SamplingParams
from .cli import (
    ENGINE_DEFAULTS,
    add_engine_arguments,
    engine_from_args,
    engine_options,
    resolve_defaults,
)
from .jsonl import InputError
from .lifetime import command
from .paths import OutputBusy, claim_output, cut_torn_line, write_atomically
from .runs import ResumeError


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


def fingerprint(args: argparse.Namespace, params: SamplingParams) -> dict:
    """What an output file is written for: the input (file contents, or the --prompt values
    and --chat) and the sampling settings."""
    if args.input:
        source = args.input.read_bytes()
    else:
        source = json.dumps({"prompts": args.prompt, "chat": args.chat}).encode()
    return {
        "input_sha256": hashlib.sha256(source).hexdigest(),
        "sampling": json.loads(json.dumps(dataclasses.asdict(params))),
    }


def sidecar(output: Path) -> Path:
    return output.with_name(output.name + ".resume.json")


def resume(output: Path, expected: dict, count: int) -> list[int]:
    """Indices of the results already in ``output``, in file order (a torn last line is cut
    off), once its sidecar shows that it was written for ``expected``."""
    if not output.exists() or output.stat().st_size == 0:
        return []
    try:
        recorded = json.loads(sidecar(output).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResumeError(
            f"cannot resume {output}: no readable {sidecar(output).name} beside it "
            f"({type(error).__name__}) to show which input and settings it was written for; "
            "delete it or choose another --output"
        ) from None
    changed = []
    if recorded.get("input_sha256") != expected["input_sha256"]:
        changed.append("the input")
    old, new = recorded.get("sampling") or {}, expected["sampling"]
    settings = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    if settings:
        changed.append(f"the sampling settings ({', '.join(settings)})")
    if changed:
        raise ResumeError(
            f"refusing to resume {output}: {' and '.join(changed)} changed since it was "
            f"written; delete it and {sidecar(output).name} or choose another --output"
        )
    return result_indices(output, count)


def result_indices(output: Path, count: int) -> list[int]:
    indices = []
    for number, line in enumerate(cut_torn_line(output).split(b"\n")[:-1], 1):
        try:
            index = json.loads(line)["index"]
        except (ValueError, KeyError, TypeError):
            raise ResumeError(f"{output}:{number}: not a result line") from None
        if not isinstance(index, int) or not 0 <= index < count:
            raise ResumeError(f"{output}:{number}: index {index!r} is no input's")
        indices.append(index)
    return indices


def put_in_order(output: Path, indices: list[int]) -> None:
    """Rewrite ``output`` (whose lines hold ``indices``) in index order, each index once."""
    if all(a < b for a, b in zip(indices, indices[1:])):
        return
    lines: dict[int, bytes] = {}
    for index, line in zip(indices, output.read_bytes().split(b"\n")):
        lines.setdefault(index, line + b"\n")
    write_atomically(output, b"".join(lines[i] for i in sorted(lines)))


def result_line(index: int, prompt: str, completion: Completion) -> str:
    samples = [
        {"text": s.text, "finish_reason": s.finish_reason, "tokens": len(s.token_ids)}
        for s in completion.samples
    ]
    record = {"index": index, "prompt": prompt, "samples": samples}
    return json.dumps(record, ensure_ascii=False) + "\n"


def prompt_text(engine: Engine, row: dict) -> str:
    return row["prompt"] if "prompt" in row else engine.apply_chat_template(row["messages"])


def generate_missing(
    engine: Engine,
    rows: list[dict],
    pending: list[int],
    params: SamplingParams,
    batch_size: int,
    out,
) -> tuple[list[int], EngineError | None]:
    """Generates ``pending`` a batch at a time, writing every finished result, and stops after
    a batch that failed. Returns the indices written, and the failure."""
    written = []
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        try:
            prompts = [prompt_text(engine, rows[i]) for i in batch]
        except EngineError as error:
            return written, error
        try:
            completions, failure = engine.generate(prompts, params), None
        except EngineError as error:
            completions, failure = error.results, error
        for index, prompt, completion in zip(batch, prompts, completions):
            if completion is not None:
                out.write(result_line(index, prompt, completion))
                written.append(index)
        out.flush()
        if failure:
            return written, failure
    return written, None


@command
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
    # Checked and held before the engine starts: one writer per output file.
    try:
        claim = (
            claim_output(args.output, folder=False, inputs=[args.input])
            if args.output
            else contextlib.nullcontext()
        )
    except (OSError, ValueError, OutputBusy) as error:
        print(f"genprm-generate: {error}", file=sys.stderr)
        return 2
    with claim:
        return generate_all(parser, args)


def generate_all(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command, once its output (if any) is claimed."""
    try:
        if args.input:
            rows = read_prompts(args.input)
        elif args.chat:
            rows = [{"messages": [{"role": "user", "content": p}]} for p in args.prompt]
        else:
            rows = [{"prompt": p} for p in args.prompt]
        params = SamplingParams(
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            stop=tuple(args.stop),
            seed=args.seed,
        )
        expected = fingerprint(args, params)
        done = resume(args.output, expected, len(rows)) if args.output else []
    except (OSError, ValueError) as error:  # InputError, ResumeError, bad sampling settings
        print(f"genprm-generate: {error}", file=sys.stderr)
        return 2
    if not rows:
        print(f"genprm-generate: no prompts in {args.input}; nothing to do", file=sys.stderr)
        return 0
    pending = sorted(set(range(len(rows))) - set(done))
    if done:
        finished = len(rows) - len(pending)
        print(
            f"genprm-generate: {finished} of {len(rows)} already in {args.output}", file=sys.stderr
        )
    if not pending:
        if args.output:
            put_in_order(args.output, done)
        return 0
    # vLLM logs to stdout by default, which here carries the results.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    preset = resolve_defaults(args, ENGINE_DEFAULTS)
    engine_options(parser, args)  # a flag of the other engine is a usage error, said first
    if preset:
        print(f"genprm-generate: {preset}", file=sys.stderr)
    try:
        engine = engine_from_args(parser, args)
    except EngineError as error:
        print(f"genprm-generate: {error}", file=sys.stderr)
        return 1
    started = time.monotonic()
    if args.output:
        write_atomically(sidecar(args.output), json.dumps(expected).encode())
    target = args.output or "stdout"
    try:
        out = args.output.open("a", encoding="utf-8") if args.output else sys.stdout
        try:
            written, failure = generate_missing(engine, rows, pending, params, args.batch_size, out)
        finally:
            if out is not sys.stdout:
                out.close()
    except OSError as error:  # a full disk, a closed pipe: what was written before is kept
        print(
            f"genprm-generate: cannot write to {target}: {error.strerror or error}", file=sys.stderr
        )
        if args.output:
            print(
                f"genprm-generate: the results written before are kept in {args.output}; free "
                "space and rerun the same command to complete it",
                file=sys.stderr,
            )
        return 1
    finally:
        counters = engine.counters
        engine.close()
    if failure:
        print(f"genprm-generate: {failure}", file=sys.stderr)
        if args.output:
            kept = len(set(done)) + len(written)
            print(
                f"genprm-generate: {kept} of {len(rows)} results are in {args.output}; rerun "
                "the same command to complete it",
                file=sys.stderr,
            )
        return 1
    if args.output:
        try:
            put_in_order(args.output, done + written)
        except OSError as error:  # names the file
            print(
                f"genprm-generate: {error}; every result is in it, not yet in order: rerun",
                file=sys.stderr,
            )
            return 1
    print(
        f"genprm-generate: {counters.requests} prompts, {counters.generated_tokens} tokens in "
        f"{time.monotonic() - started:.1f} s ({counters.generated_tokens_per_s:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
