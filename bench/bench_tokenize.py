"""Tokenizing 1,000 multi-step GenPRM conversations: our strategy vs axolotl's chat_template.

Both strategies get the same conversations in the same batched call axolotl's dataset map makes
(batches of 1,000 rows), with the same tokenizer and chat template; ours trains on code output
here so that both produce identical labels (checked before timing). Prints both times and the
ratio.

    python bench/bench_tokenize.py [--tokenizer qwen2.5|smollm2] [--conversations 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
PROCESSBENCH = REPO.parent / "shared" / "data" / "processbench"


def conversations(count: int) -> list[list[dict[str, str]]]:
    """GenPRM-shaped conversations (§1-2) over ProcessBench solutions: per step an analysis, a
    code block with its [Code Output], a remark, and the judgement implied by the label."""
    from genprm.format import CodeBlock, build_conversation, render_rationale

    rows = []
    for split in ("math", "olympiadbench", "omnimath", "gsm8k"):
        rows += [json.loads(line) for line in (PROCESSBENCH / f"{split}.jsonl").open()]
    result = []
    for record in rows[:count]:
        turns = [
            render_rationale(
                index + 1,
                f"The paragraph claims: {step[:200]}",
                [
                    CodeBlock(f"value = {index} + 1\nprint(value)", str(index + 1)),
                    "The output agrees.\n",
                ],
                record["label"] == -1 or index < record["label"],
            )
            for index, step in enumerate(record["steps"])
        ]
        result.append(build_conversation(record["problem"], record["steps"], turns))
    return result


def best_of(repeats: int, call) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", choices=["qwen2.5", "smollm2"], default="qwen2.5")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from axolotl.prompt_strategies import load
    from axolotl.prompt_strategies.chat_template import load as chat_template_load
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    from genprm.models import prepare_default_model
    from genprm.testing.tokenizers import qwen25_tokenizer

    tokenizer = (
        qwen25_tokenizer()
        if args.tokenizer == "qwen2.5"
        else AutoTokenizer.from_pretrained(prepare_default_model())
    )
    cfg = DictDefault(
        {"sequence_len": 32768, "train_on_inputs": False, "genprm_train_on_code_output": True}
    )
    ours = load("genprm_train.prompt_strategy", tokenizer, cfg, {})
    theirs = chat_template_load(tokenizer, cfg, {"field_messages": "conversations"})
    convs = conversations(args.conversations)
    batch = {"conversations": convs}
    turns = sum(len(c) // 2 for c in convs)

    our_best, our_median, our_rows = best_of(args.repeats, lambda: ours.tokenize_prompt(batch))
    their_best, their_median, their_rows = best_of(
        args.repeats, lambda: theirs.tokenize_prompt(batch)
    )
    assert our_rows["input_ids"] == their_rows["input_ids"], "input_ids differ"
    assert our_rows["labels"] == their_rows["labels"], "labels differ"
    tokens = sum(len(ids) for ids in our_rows["input_ids"])

    print(
        f"{len(convs)} conversations, {turns} assistant turns, {tokens} tokens ({args.tokenizer} tokenizer)"
    )
    print(f"genprm_train.prompt_strategy   best {our_best:8.3f} s   median {our_median:8.3f} s")
    print(f"axolotl chat_template          best {their_best:8.3f} s   median {their_median:8.3f} s")
    print(
        f"speed-up (best / median): {their_best / our_best:.1f}x / {their_median / our_median:.1f}x"
    )


if __name__ == "__main__":
    main()
