"""``genprm/conversations_per_step``: conversations counted in batches collated by axolotl's own
collators from rows of our prompt strategy, and the callback's per-step sums around a model's
forward. (test_train_e2e.py checks the logged counts of real axolotl runs.)"""

import logging

import pytest
import torch

from genprm_train.conversation_count import (
    METRIC,
    ConversationsPerStepCallback,
    conversations_in_batch,
)
from genprm_train.prompt_strategy import IGNORE_INDEX, GenPRMPromptStrategy

SEQUENCE_LEN = 2048


@pytest.fixture(scope="module")
def rows(smollm2_tokenizer, processbench_gsm8k) -> list[dict]:
    """Five ProcessBench solutions of different lengths, tokenized by our strategy, with the
    position_ids axolotl adds for sample packing."""
    from axolotl.utils.trainer import add_position_ids

    strategy = GenPRMPromptStrategy(smollm2_tokenizer, smollm2_tokenizer.chat_template)
    records = sorted(processbench_gsm8k, key=lambda r: sum(map(len, r["steps"])))[:5]
    rows = [
        strategy.tokenize_row({k: r[k] for k in ("problem", "steps", "label")}) for r in records
    ]
    assert len({len(row["input_ids"]) for row in rows}) == len(rows)  # lengths differ
    return [add_position_ids(row) for row in rows]


@pytest.mark.parametrize("collator_name", ["V2BatchSampler", "BatchSampler"])
def test_packed_rows_count_their_conversations_not_the_padding(
    rows, smollm2_tokenizer, collator_name
):
    """Two packed rows (3 + 2 conversations) padded to the sequence length, as axolotl collates
    them: V2 numbers each conversation in the attention mask, the other collator (models
    without multipack support) does not. The count reads only the labels and position ids (the
    trainer drops the mask from packed batches for flash attention and SDPA)."""
    from axolotl.utils.collators import batching

    collator_cls = getattr(batching, f"{collator_name}DataCollatorForSeq2Seq")
    collator = collator_cls(smollm2_tokenizer, padding=True, pad_to_multiple_of=SEQUENCE_LEN)
    bins = [rows[:3], rows[3:]]
    assert all(sum(len(row["input_ids"]) for row in b) < SEQUENCE_LEN for b in bins)
    batch = collator([[{**row} for row in b] for b in bins])
    assert batch["labels"].shape == (2, SEQUENCE_LEN)  # padding after each row's last one

    assert conversations_in_batch(batch["labels"], batch["position_ids"]).item() == len(rows)
    # Read as unpacked rows (no position ids), the same batch holds one per row.
    assert conversations_in_batch(batch["labels"]).item() == len(bins)


def test_a_packed_conversation_without_trained_labels_is_not_counted(rows, smollm2_tokenizer):
    from axolotl.utils.collators import V2BatchSamplerDataCollatorForSeq2Seq

    masked = {**rows[1], "labels": [IGNORE_INDEX] * len(rows[1]["labels"])}
    collator = V2BatchSamplerDataCollatorForSeq2Seq(smollm2_tokenizer, padding=True)
    batch = collator([[{**rows[0]}, masked, {**rows[2]}]])
    assert conversations_in_batch(batch["labels"], batch["position_ids"]).item() == 2


def test_unpacked_rows_count_one_conversation_each(rows, smollm2_tokenizer):
    from axolotl.utils.collators import DataCollatorForSeq2Seq

    unpacked = [{k: row[k] for k in ("input_ids", "attention_mask", "labels")} for row in rows]
    batch = DataCollatorForSeq2Seq(smollm2_tokenizer, padding=True)(unpacked)
    assert conversations_in_batch(batch["labels"]).item() == len(rows)


class Forward(torch.nn.Module):
    """A model stand-in that only has to be called: the callback reads its inputs."""

    def forward(self, input_ids=None, labels=None, position_ids=None):
        return input_ids


@pytest.fixture
def trainer_args(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        use_cpu=True,
        report_to=[],
    )
    return args, TrainerState(), TrainerControl()


def test_each_step_sums_its_training_forwards_only(rows, trainer_args, caplog):
    """Micro batches accumulate into their step and the next step starts from zero; an
    evaluation forward (model.eval()) is not trained on and is left out."""
    model, stored = Forward(), []
    callback = ConversationsPerStepCallback(model, stored.append, False, SEQUENCE_LEN)
    labels = torch.tensor([row["labels"][-40:] for row in rows])
    assert (labels != IGNORE_INDEX).any(dim=-1).all()  # 5 rows, each with a trained label
    caplog.set_level(logging.INFO, logger="axolotl.integrations.genprm")

    for micro_batch in (labels[:2], labels[2:4], labels[4:]):
        model(labels=micro_batch)
    model.eval()
    model(labels=labels)
    model.train()
    callback.on_step_end(*trainer_args)
    model(labels=labels[:2])
    callback.on_step_end(*trainer_args)

    assert stored == [{METRIC: 5.0}, {METRIC: 2.0}]
    announced = [r.getMessage() for r in caplog.records if "conversations per" in r.getMessage()]
    assert announced == [
        "genprm: 5 conversations per optimizer step (micro batch 2 x accumulation 3 x 1 process)"
    ]
    callback.on_train_end(*trainer_args)
    model(labels=labels)
    callback.on_step_end(*trainer_args)
    assert stored[-1] == {METRIC: 0.0}  # the hook is gone after training


def test_a_forward_without_labels_logs_nothing_and_says_why(trainer_args, caplog):
    """When the trainer computes the loss itself (label smoothing, a custom loss), the forward
    gets no labels: no count is better than a wrong one."""
    model, stored = Forward(), []
    callback = ConversationsPerStepCallback(model, stored.append, True, SEQUENCE_LEN)
    model(input_ids=torch.ones(2, 8, dtype=torch.long))
    callback.on_step_end(*trainer_args)
    assert stored == []
    assert any("forward gets no labels" in r.getMessage() for r in caplog.records)
