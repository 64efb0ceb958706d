"""The axolotl prompt strategy: exact label masks on SmolLM2 and Qwen2.5 tokenizers, code-output
masking, equality with axolotl's own chat_template strategy, record shapes and bad input."""

import random

import pytest
from axolotl.datasets import TokenizedPromptDataset
from axolotl.prompt_strategies import load as axolotl_load
from axolotl.prompt_strategies.chat_template import load as chat_template_load
from axolotl.utils.dict import DictDefault
from datasets import Dataset

from genprm.format import (
    CodeBlock,
    build_conversation,
    build_direct_conversation,
    code_output_text,
    render_rationale,
)
from genprm.records import RecordError
from genprm_train.prompt_strategy import IGNORE_INDEX, GenPRMPromptStrategy


def cfg(**overrides) -> DictDefault:
    return DictDefault({"sequence_len": 8192, "train_on_inputs": False, **overrides})


def strategy(tokenizer, **overrides) -> GenPRMPromptStrategy:
    ds_cfg = DictDefault(
        {"path": "train.jsonl", "type": "genprm_train.prompt_strategy"}
    )  # as axolotl passes it
    loaded = axolotl_load("genprm_train.prompt_strategy", tokenizer, cfg(**overrides), ds_cfg)
    assert isinstance(loaded, GenPRMPromptStrategy)
    return loaded


def rationales(record: dict, rng: random.Random) -> list[str]:
    """Rationales in the §2 shape for each step of a ProcessBench record, judged by its label."""
    turns = []
    for index, step in enumerate(record["steps"]):
        verify: list = [CodeBlock(f"x = {index} * 3\nprint(x)", str(index * 3))]
        if rng.random() < 0.5:
            verify += ["The output matches the paragraph.\n", CodeBlock("print('ok')", "ok\nmore")]
        if rng.random() < 0.3:
            verify.append(CodeBlock("y = 1", None))
        correct = record["label"] == -1 or index < record["label"]
        turns.append(
            render_rationale(index + 1, f"The paragraph says: {step[:80]}", verify, correct)
        )
    return turns


@pytest.fixture(scope="module")
def cot_records(processbench_gsm8k):
    rng = random.Random(0)
    return [
        {
            "id": r["id"],
            "problem": r["problem"],
            "steps": r["steps"],
            "rationales": rationales(r, rng),
        }
        for r in processbench_gsm8k[:24]
    ]


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])


def without_code_outputs(text: str, outputs: list[str]) -> str:
    for output in outputs:
        text = text.replace(code_output_text(output), "", 1)
    return text


def test_tokens_are_the_chat_template_tokens(tokenizer, cot_records):
    row = strategy(tokenizer).tokenize_row(cot_records[0])
    messages = build_conversation(
        cot_records[0]["problem"], cot_records[0]["steps"], cot_records[0]["rationales"]
    )
    assert row["input_ids"] == tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=False
    )
    assert row["attention_mask"] == [1] * len(row["input_ids"])


@pytest.mark.parametrize("train_on_code_output", [False, True])
def test_exact_label_mask(tokenizer, train_on_code_output):
    """Loss on exactly: each assistant turn (minus its [Code Output] blocks by default) and the
    end-of-turn token after it; nothing from the system or user turns."""
    first = render_rationale(1, "Adds.", [CodeBlock("print(2+2)", "4")], True)
    second = render_rationale(
        2,
        "Halves.",
        [CodeBlock("print(4/2)", "2.0"), "So it is right?\n", CodeBlock("pass", "")],
        False,
    )
    record = {
        "problem": "What is (2+2)/2?",
        "steps": ["2+2=4.", "4/2=3."],
        "rationales": [first, second],
    }
    row = strategy(tokenizer, genprm_train_on_code_output=train_on_code_output).tokenize_row(record)

    eot = tokenizer.eos_token
    if train_on_code_output:
        expected = first + eot + second + eot
    else:
        expected = (
            without_code_outputs(first, ["4"])
            + eot
            + without_code_outputs(second, ["2.0", ""])
            + eot
        )
    assert trained_text(tokenizer, row) == expected
    # Every trained token is a trained token of the input, at the same position.
    assert all(
        label in (IGNORE_INDEX, token) for label, token in zip(row["labels"], row["input_ids"])
    )
    # The prompt (system + first user turn) carries no loss.
    first_trained = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
    prompt = tokenizer.decode(row["input_ids"][:first_trained])
    assert prompt.endswith("assistant\n") and "What is (2+2)/2?\n2+2=4." in prompt


def test_code_output_tokens_are_masked_and_code_is_trained(tokenizer):
    turn = render_rationale(1, "Check.", [CodeBlock("print(12345 * 6789)", "83810205")], True)
    record = {"problem": "p", "steps": ["s"], "rationales": [turn]}
    masked = strategy(tokenizer).tokenize_row(record)
    trained = trained_text(tokenizer, masked)
    assert "print(12345 * 6789)" in trained
    assert "83810205" not in trained and "[Code Output]" not in trained
    unmasked = trained_text(
        tokenizer, strategy(tokenizer, genprm_train_on_code_output=True).tokenize_row(record)
    )
    assert "[Code Output]\n\n```\n83810205\n```\n" in unmasked


def test_equals_axolotl_chat_template_when_code_output_is_trained(
    tokenizer, cot_records, processbench_gsm8k
):
    """Token for token against axolotl's own strategy on the same conversations."""
    direct = [
        {"conversations": build_direct_conversation(r["problem"], r["steps"], r["label"])}
        for r in processbench_gsm8k[:24]
    ]
    cot = [
        {"conversations": build_conversation(r["problem"], r["steps"], r["rationales"])}
        for r in cot_records
    ]
    ours = strategy(tokenizer, genprm_train_on_code_output=True)
    theirs = chat_template_load(tokenizer, cfg(), {"field_messages": "conversations"})
    for row in direct + cot:
        mine, reference = ours.tokenize_row(row), theirs.tokenize_prompt(row)
        assert mine["input_ids"] == reference["input_ids"]
        assert mine["labels"] == reference["labels"]


def test_released_row_and_structured_record_give_the_same_tokens(
    tokenizer, cot_records, processbench_gsm8k
):
    ours = strategy(tokenizer)
    record = cot_records[3]
    released = {
        "conversations": build_conversation(
            record["problem"], record["steps"], record["rationales"]
        )
    }
    assert ours.tokenize_row(record) == ours.tokenize_row(released)

    labelled = processbench_gsm8k[5]
    structured = {
        "problem": labelled["problem"],
        "steps": labelled["steps"],
        "label": labelled["label"],
    }
    chat = {
        "messages": build_direct_conversation(
            labelled["problem"], labelled["steps"], labelled["label"]
        )
    }
    assert ours.tokenize_row(structured) == ours.tokenize_row(chat)


def test_rationales_are_closed_with_their_labels(smollm2_tokenizer):
    open_turn = render_rationale(1, "Fine.", [CodeBlock("print(1)", "1")], None)
    record = {
        "problem": "p",
        "steps": ["a", "b"],
        "rationales": [open_turn, open_turn],
        "labels": [1, 0],
    }
    text = trained_text(smollm2_tokenizer, strategy(smollm2_tokenizer).tokenize_row(record))
    assert text.count("$\\boxed{Yes}$") == 1 and text.count("$\\boxed{No}$") == 1

    judged = render_rationale(1, "Fine.", [], True)
    with pytest.raises(RecordError, match="label says wrong"):
        strategy(smollm2_tokenizer).tokenize_row(
            {"id": "r1", "problem": "p", "steps": ["a"], "rationales": [judged], "labels": [0]}
        )


BAD_RECORDS = [
    ({"id": "no-assistant", "conversations": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     "no assistant turn"),
    ({"id": "empty-steps", "problem": "p", "steps": [], "label": -1}, "non-empty list"),
    ({"id": "int-content", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 7}]},
     "content is int"),
    ({"id": "bad-role", "messages": [{"role": "critic", "content": "u"}, {"role": "assistant", "content": "a"}]},
     "unknown role 'critic'"),
    ({"id": "label-out-of-range", "problem": "p", "steps": ["a"], "label": 3}, "outside -1..0"),
    ({"id": "nothing", "text": "plain"}, "expected `conversations`"),
]  # fmt: skip


@pytest.mark.parametrize("record, reason", BAD_RECORDS, ids=[r["id"] for r, _ in BAD_RECORDS])
def test_bad_records_fail_naming_the_record(smollm2_tokenizer, record, reason):
    with pytest.raises(RecordError, match=rf"record id='{record['id']}'.*{reason}"):
        strategy(smollm2_tokenizer).tokenize_row(record)


def test_bad_record_fails_inside_axolotls_dataset_wrapper(smollm2_tokenizer, processbench_gsm8k):
    """Through axolotl's own batched map: the bad row stops the run, it is not an empty sample."""
    good = [
        {"id": r["id"], "problem": r["problem"], "steps": r["steps"], "label": r["label"]}
        for r in processbench_gsm8k[:5]
    ]
    rows = good + [{"id": "gsm8k-bad", "problem": "p", "steps": [], "label": -1}]
    with pytest.raises(Exception, match="record id='gsm8k-bad'"):
        TokenizedPromptDataset(strategy(smollm2_tokenizer), Dataset.from_list(rows))
    tokenized = TokenizedPromptDataset(strategy(smollm2_tokenizer), Dataset.from_list(good))
    assert len(tokenized) == 5
    assert all(any(label != IGNORE_INDEX for label in row) for row in tokenized["labels"])


def test_template_that_rewrites_assistant_turns_is_refused(smollm2_tokenizer):
    rewriting = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    ours = GenPRMPromptStrategy(smollm2_tokenizer, rewriting)
    with pytest.raises(RecordError, match="does not appear verbatim"):
        ours.tokenize_row({"id": "x", "problem": "p", "steps": ["a"], "label": -1})


def test_train_on_inputs_is_refused(smollm2_tokenizer):
    with pytest.raises(ValueError, match="assistant turns only"):
        axolotl_load(
            "genprm_train.prompt_strategy", smollm2_tokenizer, cfg(train_on_inputs=True), {}
        )
