"""The axolotl prompt strategy: exact label masks on SmolLM2 and Qwen2.5 tokenizers, code-output
masking, equality with axolotl's own chat_template strategy, record shapes and bad input, and
end-of-turn tokens (templates without one, multi-token and custom ``eot_tokens``)."""

import random

import pytest
from axolotl.datasets import TokenizedPromptDataset
from axolotl.prompt_strategies import load as axolotl_load
from axolotl.prompt_strategies.chat_template import load as chat_template_load
from axolotl.utils.dict import DictDefault
from datasets import Dataset
from transformers import AutoTokenizer

from genprm.format import (
    CodeBlock,
    build_conversation,
    build_direct_conversation,
    code_output_text,
    judgement_text,
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
    """Found on the probe conversation when the strategy is built, before any record."""
    rewriting = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}{{ eos_token }}\n"
        "{% endfor %}"
    )
    with pytest.raises(
        ValueError, match="given to GenPRMPromptStrategy: .*does not appear verbatim"
    ):
        GenPRMPromptStrategy(smollm2_tokenizer, rewriting)


def test_train_on_inputs_is_refused(smollm2_tokenizer):
    with pytest.raises(ValueError, match="assistant turns only"):
        axolotl_load(
            "genprm_train.prompt_strategy", smollm2_tokenizer, cfg(train_on_inputs=True), {}
        )


@pytest.fixture(scope="module")
def qwen_base_tokenizer(qwen_tokenizer):
    """Qwen2.5 as its base models ship it: EOS is <|endoftext|>, which the ChatML template
    never writes (turns end with <|im_end|>)."""
    return AutoTokenizer.from_pretrained(qwen_tokenizer.name_or_path, eos_token="<|endoftext|>")


def test_template_without_end_of_turn_is_refused_naming_it(smollm2_tokenizer):
    no_end = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError) as refused:
        strategy(smollm2_tokenizer, chat_template="jinja", chat_template_jinja=no_end)
    message = str(refused.value)
    assert "`chat_template: jinja` writes '\\n<user>" in message
    assert "no '<|im_end|>' within 3 tokens" in message and "set `eot_tokens: [...]`" in message


def test_eos_the_template_never_writes_is_refused_with_the_fix(qwen_base_tokenizer):
    with pytest.raises(ValueError) as refused:
        strategy(qwen_base_tokenizer)
    message = str(refused.value)
    assert message.startswith(
        "the tokenizer's own chat template (`chat_template: tokenizer_default`)"
    )
    assert "no '<|endoftext|>'" in message and "set `eot_tokens: ['<|im_end|>']`" in message


def test_tokenizer_without_eos_and_without_eot_tokens_is_refused(qwen_tokenizer):
    no_eos = AutoTokenizer.from_pretrained(qwen_tokenizer.name_or_path, eos_token=None)
    with pytest.raises(ValueError, match="the tokenizer has no eos_token.*never learn to end"):
        GenPRMPromptStrategy(no_eos, no_eos.chat_template)


@pytest.mark.parametrize("entry", ["</turn>", ""])
def test_eot_tokens_entry_that_is_not_one_token_is_refused(qwen_tokenizer, entry):
    with pytest.raises(ValueError) as refused:
        strategy(qwen_tokenizer, eot_tokens=["<|im_end|>", entry])
    message = str(refused.value)
    assert message.startswith("the tokenizer's own chat template")
    assert f"eot_tokens entry {entry!r} is" in message and "must be one token" in message
    assert "`tokens:`" in message and "`added_tokens_overrides:`" in message


def test_custom_eot_token_trains_exactly_one_per_assistant_turn(
    qwen_base_tokenizer, cot_records, processbench_gsm8k
):
    """ChatML's <|im_end|> as `eot_tokens` where EOS is another token: one trained per assistant
    turn, right after its content; those after system and user turns stay masked. Equal to
    axolotl's strategy with the same `eot_tokens`."""
    im_end = qwen_base_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ours = strategy(
        qwen_base_tokenizer, eot_tokens=["<|im_end|>"], genprm_train_on_code_output=True
    )
    theirs = chat_template_load(
        qwen_base_tokenizer, cfg(eot_tokens=["<|im_end|>"]), {"field_messages": "conversations"}
    )
    record = cot_records[1]
    messages = build_conversation(record["problem"], record["steps"], record["rationales"])
    row = ours.tokenize_row({"conversations": messages})
    assistant_turns = sum(m["role"] == "assistant" for m in messages)
    trained_ends = [i for i, label in enumerate(row["labels"]) if label == im_end]
    assert len(trained_ends) == assistant_turns
    assert row["input_ids"].count(im_end) == len(messages)  # system, user and assistant turns
    assert all(row["labels"][i - 1] != IGNORE_INDEX for i in trained_ends)
    assert trained_text(qwen_base_tokenizer, row) == "".join(
        m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"
    )
    assert row["labels"] == theirs.tokenize_prompt({"conversations": messages})["labels"]


def test_eos_after_the_end_of_turn_token_is_trained_too(qwen_base_tokenizer):
    """As axolotl's `train_on_eos: turn` does: the EOS a template writes after an assistant
    turn is trained besides the `eot_tokens` token."""
    with_eos = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    )
    overrides = {"eot_tokens": ["<|im_end|>"], "chat_template": "jinja"}
    ours = strategy(qwen_base_tokenizer, chat_template_jinja=with_eos, **overrides)
    theirs = chat_template_load(
        qwen_base_tokenizer,
        cfg(chat_template_jinja=with_eos, **overrides),
        {"field_messages": "conversations"},
    )
    row = {"conversations": build_direct_conversation("p", ["a", "b"], 1)}
    mine = ours.tokenize_row(row)
    assert trained_text(qwen_base_tokenizer, mine) == (
        judgement_text(True) + "<|im_end|><|endoftext|>"
        + judgement_text(False) + "<|im_end|><|endoftext|>"
    )  # fmt: skip
    assert mine["labels"] == theirs.tokenize_prompt(row)["labels"]
