"""GRPO prompts from math problems: ``python -m genprm_train.grpo INPUT OUTPUT.jsonl``.

Reads what ``genprm.problems`` reads (GSM8K or MATH-500 JSONL, parquet, a saved HF
dataset or a hub id) and writes one line per problem for an axolotl ``rl: grpo`` dataset with
no ``type:`` (axolotl takes such rows as they are):
``{"id", "prompt": [system, user], "problem", "answer"}``. The prompt is the policy prompt of
spec §5 (SYSTEM_POLICY, then the problem); ``problem`` and ``answer`` are the columns the
``genprm_reward:`` block reads (``problem_column``, ``answer_column``). Unusable rows are
reported (file:line: reason) and make the command fail unless ``--skip-bad``.

>>> grpo_row({"id": "gsm8k-test-0", "problem": "What is 2+3?", "answer": "5"})["prompt"][1]
{'role': 'user', 'content': 'What is 2+3?'}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genprm.format import SYSTEM_POLICY
from genprm.problems import ProblemFields, load_problems


def grpo_row(record: dict) -> dict:
    """A GRPO dataset row for a ``{"id", "problem", "answer"}`` problem record."""
    prompt = [
        {"role": "system", "content": SYSTEM_POLICY},
        {"role": "user", "content": record["problem"]},
    ]
    return {"id": record["id"], "prompt": prompt, **{k: record[k] for k in ("problem", "answer")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genprm_train.grpo", description=__doc__)
    parser.add_argument("input", help="GSM8K / MATH-500 JSONL, parquet, HF dataset or hub id")
    parser.add_argument("output", type=Path, help="the GRPO dataset (JSONL) to write")
    parser.add_argument("--limit", type=int, help="the first N usable problems only")
    parser.add_argument("--problem-field", help="default: problem, else question")
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--split", default="train", help="for a saved HF dataset or hub id")
    parser.add_argument("--skip-bad", action="store_true", help="write the usable rows anyway")
    args = parser.parse_args(argv)
    fields = ProblemFields(args.problem_field, args.answer_field, split=args.split)
    records, errors = load_problems(args.input, fields, args.limit)
    for error in errors:
        print(f"unusable: {error}", file=sys.stderr)
    if errors and not args.skip_bad:
        print(f"{len(errors)} unusable rows: nothing written (--skip-bad writes the rest)",
              file=sys.stderr)  # fmt: skip
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(grpo_row(record), ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} prompts to {args.output} ({len(errors)} rows skipped)",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
