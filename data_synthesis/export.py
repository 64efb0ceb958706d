"""``export``: the consensus filter's kept records as GenPRM training conversations (spec §1-2).

Each conversation judges a solution's steps up to and including its first wrong one (all steps
when none is wrong), one assistant turn per step: the step's rationale closed with the
``<output>`` judgement its label implies. :func:`export_dataset` writes, into one folder:

- ``conversations.jsonl``: one ``{"conversations": [{"role", "content"}, ...]}`` line per
  solution, the shape of the released GenPRM-MATH-Data, with the solution's ``id`` beside it
  (a stable id from the first stage to the last; the prompt strategy reads ``conversations``);
- ``dataset/``: the same rows as a Hugging Face ``datasets`` folder (``load_from_disk``);
- ``README.md``: a dataset card with the counts, the run's settings and an axolotl snippet.

Export reads the whole (small) filtered file at once; each file is replaced atomically, so a
rerun overwrites the last one cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, Features, Value

from genprm.format import FormatError, build_conversation, first_error_from_labels, with_judgement
from genprm.paths import publish_dir, staging_dir, write_atomically
from genprm.records import describe

from .filter import needed_steps

CONVERSATIONS = "conversations.jsonl"
DATASET = "dataset"
CARD = "README.md"
FEATURES = Features(
    {
        "id": Value("string"),
        "conversations": [{"role": Value("string"), "content": Value("string")}],
    }
)


class ExportError(ValueError):
    """A record that cannot become a training conversation, named by its id."""


def conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    """The training conversation of one kept record (``problem``, ``steps``, ``labels``,
    ``first_error``, ``rationales``)."""
    try:
        problem, steps = record["problem"], record["steps"]
        labels, rationales = record["labels"], record["rationales"]
        error = record["first_error"]
        if not isinstance(steps, list) or not isinstance(labels, list):
            raise FormatError("`steps` and `labels` must be lists")
        if not isinstance(rationales, list) or not len(labels) == len(rationales) == len(steps):
            raise FormatError("`labels` and `rationales` must have one entry per step")
        if first_error_from_labels(labels) != error:
            raise FormatError(f"`first_error` {error!r} is not the first 0 of `labels` {labels}")
        judged = needed_steps(error, len(steps))
        turns = []
        for index in range(judged):
            if not isinstance(rationales[index], str):
                raise FormatError(f"step {index} has no rationale")
            turns.append(with_judgement(rationales[index], bool(labels[index])))
        return build_conversation(problem, steps[:judged], turns)
    except KeyError as missing:
        raise ExportError(f"{describe(record)}: no {missing.args[0]!r} field") from None
    except FormatError as error:
        raise ExportError(f"{describe(record)}: {error}") from None


def export_dataset(records: list[dict[str, Any]], out_dir: Path, source: dict) -> dict[str, int]:
    """Write the training set of ``records`` into ``out_dir``; returns its counts.

    ``source`` (the run's config and stage settings, JSON values) is quoted in the card.
    Nothing is written when a record cannot be converted. No records (the filter kept none)
    give empty files and a card that says so.
    """
    rows = [{"id": record["id"], "conversations": conversation(record)} for record in records]
    summary = _counts(records, rows)
    out_dir = Path(out_dir)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_atomically(out_dir / CONVERSATIONS, lines.encode())
    _write_dataset(rows, out_dir / DATASET)
    write_atomically(out_dir / CARD, card(summary, source, out_dir).encode())
    return summary


def _counts(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, int]:
    judged = [label for record in records for label in record["labels"]]
    turns = [len(row["conversations"]) // 2 for row in rows]
    no_turns = sum(record["first_error"] != -1 for record in records)
    return {
        "conversations": len(rows),
        "solution_steps": len(judged),
        "turns": sum(turns),
        "yes_turns": sum(turns) - no_turns,
        "no_turns": no_turns,
        "all_correct": len(rows) - no_turns,
    }


def _write_dataset(rows: list[dict[str, Any]], target: Path) -> None:
    staging = staging_dir(target)
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    # one shard: datasets cannot split an empty table into shards
    Dataset.from_dict(columns, features=FEATURES).save_to_disk(str(staging), num_shards=1)
    publish_dir(staging, target)


def card(summary: dict[str, int], source: dict, out_dir: Path) -> str:
    """The dataset card (README.md) of an export."""
    data_path = (Path(out_dir) / CONVERSATIONS).resolve()
    settings = json.loads(json.dumps(source, default=str))  # e.g. Paths as plain strings
    axolotl_snippet = yaml.safe_dump(
        {
            "plugins": ["genprm_train.GenPRMPlugin"],
            "datasets": [
                {"path": str(data_path), "ds_type": "json", "type": "genprm_train.prompt_strategy"}
            ],
        },
        sort_keys=False,
    )
    turns = summary["turns"]
    no_share = summary["no_turns"] / turns if turns else 0.0
    return f"""---
tags:
- genprm
- process-reward-model
configs:
- config_name: default
  data_files: {CONVERSATIONS}
---

# GenPRM training conversations

Synthesized by genprm's data-synthesis pipeline (solve, rollout, label, rationale, filter,
export). Each row is one policy solution reviewed step by step in the GenPRM format: a user
turn per step and an assistant turn with the `<analyze>` / `<verify>` rationale (python code
and its `[Code Output]`) closed by the `<output>` judgement of the step's Monte Carlo label.
Only solutions where the rationale model's earliest wrong paragraph matched the labels' first
wrong step were kept; a conversation ends at that step.

- `{CONVERSATIONS}`: one `{{"conversations": [{{"role", "content"}}, ...]}}` per line, the shape
  of the released GenPRM-MATH-Data.
- `{DATASET}/`: the same rows for `datasets.load_from_disk`.

## Counts

| | |
|---|---|
| conversations | {summary["conversations"]} |
| solutions judged correct throughout | {summary["all_correct"]} |
| steps of the solutions | {summary["solution_steps"]} |
| steps judged (assistant turns) | {turns} |
| `Yes` judgements | {summary["yes_turns"]} |
| `No` judgements | {summary["no_turns"]} ({no_share:.1%} of turns) |

## Source settings

```yaml
{yaml.safe_dump(settings, sort_keys=False).rstrip()}
```

## Training with axolotl

Add to an axolotl config (see `axolotl_configs/` for complete ones):

```yaml
{axolotl_snippet.rstrip()}
```

`genprm_train.prompt_strategy` puts the loss on the assistant turns only, and by default not on
the `[Code Output]` blocks, which the executor wrote (`genprm_train_on_code_output: true`
trains them too).
"""
