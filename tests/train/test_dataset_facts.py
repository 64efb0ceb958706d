"""dataset_facts and DatasetFactsCallback on rows tokenized by the real axolotl strategy."""

import sys

import pytest
from axolotl.datasets import TokenizedPromptDataset
from axolotl.prompt_strategies import load as axolotl_load
from axolotl.utils.dict import DictDefault
from datasets import Dataset
from transformers import TrainerControl, TrainerState, TrainingArguments

from genprm_train.dataset_facts import DatasetFactsCallback, dataset_facts
from genprm_train.prompt_strategy import IGNORE_INDEX

KEYS = {
    "samples",
    "tokens_per_sample",
    "steps_per_sample",
    "yes_share",
    "no_share",
    "masked_token_share",
}


def load_strategy(tokenizer):
    return axolotl_load(
        "genprm_train.prompt_strategy",
        tokenizer,
        DictDefault({"sequence_len": 4096, "train_on_inputs": False}),
        DictDefault({"path": "x", "type": "genprm_train.prompt_strategy"}),
    )


@pytest.fixture(scope="module")
def records(processbench_gsm8k):
    # Ten records mixing all-correct (-1), first-step-wrong (0) and later errors.
    picked = [r for r in processbench_gsm8k if r["label"] == -1][:4]
    picked += [r for r in processbench_gsm8k if r["label"] == 0][:2]
    picked += [r for r in processbench_gsm8k if r["label"] >= 1][:4]
    assert len(picked) == 10
    return [{k: r[k] for k in ("id", "problem", "steps", "label")} for r in picked]


def tokenized(tokenizer, rows):
    return TokenizedPromptDataset(load_strategy(tokenizer), Dataset.from_list(rows))


@pytest.fixture(scope="module")
def smollm2_dataset(smollm2_tokenizer, records):
    return tokenized(smollm2_tokenizer, records)


@pytest.mark.parametrize("batch_size", [3, 512])
def test_facts_match_independent_counts(tokenizer, records, batch_size):
    dataset = tokenized(tokenizer, records)
    assert len(dataset) == 10
    facts = dataset_facts(dataset, tokenizer, batch_size=batch_size)
    assert set(facts) == KEYS

    judged = [len(r["steps"]) if r["label"] == -1 else r["label"] + 1 for r in records]
    no_turns = sum(r["label"] >= 0 for r in records)
    assert no_turns == 6
    tokens = sum(len(row["input_ids"]) for row in dataset)
    trained = sum(sum(t != IGNORE_INDEX for t in row["labels"]) for row in dataset)

    assert facts["samples"] == 10
    assert facts["steps_per_sample"] == pytest.approx(sum(judged) / 10)
    assert facts["no_share"] == pytest.approx(no_turns / sum(judged))
    assert facts["yes_share"] == pytest.approx((sum(judged) - no_turns) / sum(judged))
    assert facts["yes_share"] + facts["no_share"] == pytest.approx(1.0)
    assert facts["tokens_per_sample"] == pytest.approx(tokens / 10)
    assert facts["masked_token_share"] == pytest.approx(1 - trained / tokens)
    assert 0.5 < facts["masked_token_share"] < 1.0  # system + user text dominates direct mode


def test_batch_size_does_not_change_facts(smollm2_dataset, smollm2_tokenizer):
    reference = dataset_facts(smollm2_dataset, smollm2_tokenizer)
    for batch_size in (1, 3, 4, 10):
        assert dataset_facts(
            smollm2_dataset, smollm2_tokenizer, batch_size=batch_size
        ) == pytest.approx(reference)


def test_facts_follow_the_labels(smollm2_tokenizer, records):
    all_correct = [r for r in records if r["label"] == -1]
    facts = dataset_facts(
        tokenized(smollm2_tokenizer, all_correct), smollm2_tokenizer, batch_size=3
    )
    assert facts["samples"] == len(all_correct)
    assert facts["no_share"] == 0.0 and facts["yes_share"] == 1.0
    assert facts["steps_per_sample"] == pytest.approx(
        sum(len(r["steps"]) for r in all_correct) / len(all_correct)
    )

    first_wrong = [r for r in records if r["label"] == 0]
    facts = dataset_facts(
        tokenized(smollm2_tokenizer, first_wrong), smollm2_tokenizer, batch_size=3
    )
    assert facts["no_share"] == 1.0 and facts["yes_share"] == 0.0
    assert facts["steps_per_sample"] == 1.0


def test_empty_dataset_gives_zeros(smollm2_tokenizer):
    empty = Dataset.from_dict({"input_ids": [], "labels": []})
    facts = dataset_facts(empty, smollm2_tokenizer, batch_size=3)
    assert facts == {key: 0 for key in KEYS}


def test_row_with_every_token_masked(smollm2_tokenizer):
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]], "labels": [[IGNORE_INDEX] * 4]})
    facts = dataset_facts(rows, smollm2_tokenizer)
    assert facts["samples"] == 1
    assert facts["masked_token_share"] == 1.0
    assert facts["steps_per_sample"] == facts["yes_share"] == facts["no_share"] == 0.0


def train_args(tmp_path, report_to):
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to=report_to, use_cpu=True)


class WandbTripwire:
    """Stands in for the wandb module: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"wandb.{name} used although report_to has no wandb")


def test_callback_without_wandb(smollm2_dataset, smollm2_tokenizer, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", WandbTripwire())
    state = TrainerState()
    assert state.is_world_process_zero
    callback = DatasetFactsCallback(smollm2_dataset, smollm2_tokenizer)
    with caplog.at_level("INFO", logger="axolotl.integrations.genprm"):
        callback.on_train_begin(train_args(tmp_path, []), state, TrainerControl())
    assert "GenPRM training set:" in caplog.text and "genprm/samples=10" in caplog.text
    assert not (tmp_path / "wandb").exists()
    # The tripwire does catch a callback that reaches for wandb.
    with pytest.raises(AssertionError, match="wandb.run"):
        callback.on_train_begin(train_args(tmp_path, ["wandb"]), state, TrainerControl())


def test_callback_off_main_process_does_nothing(smollm2_tokenizer, tmp_path, caplog):
    state = TrainerState(is_world_process_zero=False)
    # A dataset without the needed columns would raise if it were read.
    callback = DatasetFactsCallback(Dataset.from_dict({"x": [1]}), smollm2_tokenizer)
    with caplog.at_level("INFO", logger="axolotl.integrations.genprm"):
        callback.on_train_begin(train_args(tmp_path, []), state, TrainerControl())
    assert "GenPRM training set" not in caplog.text


def test_callback_writes_summary_to_offline_wandb_run(smollm2_dataset, smollm2_tokenizer, tmp_path):
    import wandb

    expected = dataset_facts(smollm2_dataset, smollm2_tokenizer)
    run = wandb.init(mode="offline", dir=tmp_path, project="genprm-test")
    try:
        DatasetFactsCallback(smollm2_dataset, smollm2_tokenizer).on_train_begin(
            train_args(tmp_path, ["wandb"]), TrainerState(), TrainerControl()
        )
        summary = dict(run.summary)
        for key, value in expected.items():
            assert summary[f"genprm/{key}"] == pytest.approx(value), key
        assert run.config["genprm/samples"] == 10
    finally:
        wandb.finish()
    assert wandb.run is None
