"""The production template: DeepSeek-R1-Distill-Qwen's tokenizer and published chat template (the
GPU configs' base models), built offline. Its facts, exact label masks, equality with axolotl's
own chat_template strategy, ``genprm-convert`` output, and the turns and settings it refuses."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from axolotl.prompt_strategies import load as axolotl_load
from axolotl.prompt_strategies.chat_template import load as chat_template_load
from axolotl.utils.dict import DictDefault
from transformers import AutoTokenizer

from genprm.format import (
    SYSTEM_COT,
    SYSTEM_DIRECT,
    CodeBlock,
    build_conversation,
    build_direct_conversation,
    code_output_text,
    judgement_text,
    render_rationale,
)
from genprm.records import RecordError
from genprm.testing.tokenizers import r1_distill_qwen_tokenizer
from genprm_train.prompt_strategy import IGNORE_INDEX, GenPRMPromptStrategy

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
# sha256 of the chat_template string in DeepSeek-R1-Distill-Qwen-7B's tokenizer_config.json
# (the revision whose generation prompt is "<｜Assistant｜><think>\n").
PUBLISHED_TEMPLATE_SHA256 = "56a1447ad31926fdc21fb07e56e5642bd9c850c4f52d8c8af7bbe5f079a84f5f"


@pytest.fixture(scope="module")
def r1_tokenizer():
    return r1_distill_qwen_tokenizer()


def strategy(tokenizer, **overrides) -> GenPRMPromptStrategy:
    cfg = DictDefault({"sequence_len": 8192, "train_on_inputs": False, **overrides})
    ds_cfg = DictDefault({"path": "train.jsonl", "type": "genprm_train.prompt_strategy"})
    return axolotl_load("genprm_train.prompt_strategy", tokenizer, cfg, ds_cfg)


def runs(tokenizer, row) -> list[tuple[str, bool]]:
    """The row as maximal runs of trained or masked tokens: ``(decoded text, trained)``."""
    out: list[tuple[list[int], bool]] = []
    for token, label in zip(row["input_ids"], row["labels"]):
        trained = label != IGNORE_INDEX
        if out and out[-1][1] == trained:
            out[-1][0].append(token)
        else:
            out.append(([token], trained))
    return [(tokenizer.decode(tokens), trained) for tokens, trained in out]


def merged(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for text, trained in segments:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def turn_segments(turn: str, outputs: list[str]) -> list[tuple[str, bool]]:
    """An assistant turn trained except for its executor-written [Code Output] blocks."""
    segments = []
    for output in outputs:
        before, block, turn = turn.partition(code_output_text(output))
        assert block, f"no [Code Output] block for {output!r}"
        segments += [(before, True), (block, False)]
    return segments + [(turn, True)]


def test_tokenizer_is_the_published_one(r1_tokenizer):
    ids = r1_tokenizer.convert_tokens_to_ids
    r1_tokens = [EOS, USER, ASSISTANT, BOS, "<|EOT|>", "<think>", "</think>"]
    assert [ids(token) for token in r1_tokens] == list(range(151643, 151650))
    assert ids("<|quad_start|>") == 151650 and ids("<|file_sep|>") == 151664
    assert len(r1_tokenizer) == 151665
    assert r1_tokenizer.bos_token == BOS
    assert r1_tokenizer.eos_token == r1_tokenizer.pad_token == EOS
    special = {str(t) for t in r1_tokenizer.added_tokens_decoder.values() if t.special}
    assert special == {
        EOS, BOS, "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    }  # fmt: skip
    assert r1_tokenizer("2 + 2")["input_ids"][0] == ids(BOS)
    assert ids(BOS) not in r1_tokenizer("2 + 2", add_special_tokens=False)["input_ids"]
    assert hashlib.sha256(r1_tokenizer.chat_template.encode()).hexdigest() == (
        PUBLISHED_TEMPLATE_SHA256
    )


def test_published_file_layout_loads_as_this_tokenizer(r1_tokenizer, tmp_path):
    """The model repo's tokenizer_config.json names `LlamaTokenizerFast`; transformers 5 must
    still load it as Qwen2's byte-level BPE (config.json's model_type decides), or training the
    real model would tokenize differently from these tests."""
    shutil.copytree(r1_tokenizer.name_or_path, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True, legacy=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    published = AutoTokenizer.from_pretrained(tmp_path)
    text = f"Is 1 +  1 = 2?\n\n```python\nprint(1 + 1)\n```\n{USER}2{ASSISTANT}<think>"
    assert published(text)["input_ids"] == r1_tokenizer(text)["input_ids"]
    assert published.chat_template == r1_tokenizer.chat_template


def test_template_facts(r1_tokenizer):
    """BOS, then the system prompt; no newline after a turn; each assistant turn closed by EOS and
    cut to what follows `</think>`; the generation prompt opens `<think>\\n`."""
    messages = [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1\n"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "thinking</think>a2"},
    ]
    assert r1_tokenizer.apply_chat_template(messages, tokenize=False) == (
        f"{BOS}S.{USER}u1{ASSISTANT}a1\n{EOS}{USER}u2{ASSISTANT}a2{EOS}"
    )
    assert (
        r1_tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
        == f"{BOS}S.{USER}u1{ASSISTANT}a1\n{EOS}{USER}u2{ASSISTANT}<think>\n"
    )


def test_exact_label_mask(r1_tokenizer):
    """Trained: each assistant turn but its [Code Output] blocks, and the EOS after it. Masked:
    BOS, system prompt, user turns with their tags, the assistant tag, executor output."""
    first = render_rationale(1, "Adds.", [CodeBlock("print(2+2)", "4")], True)
    second = render_rationale(
        2,
        "Halves.",
        [CodeBlock("print(4/2)", "2.0"), "So it is right?\n", CodeBlock("pass", "")],
        False,
    )
    record = {
        "id": "r1-mask",
        "problem": "What is (2+2)/2?",
        "steps": ["2+2=4.", "4/2=3."],
        "rationales": [first, second],
    }
    row = strategy(r1_tokenizer).tokenize_row(record)

    expected = merged(
        [(BOS + SYSTEM_COT + USER + "What is (2+2)/2?\n2+2=4." + ASSISTANT, False)]
        + turn_segments(first, ["4"])
        + [(EOS, True), (USER + "4/2=3." + ASSISTANT, False)]
        + turn_segments(second, ["2.0", ""])
        + [(EOS, True)]
    )
    assert runs(r1_tokenizer, row) == expected

    ids, labels = row["input_ids"], row["labels"]
    bos, eos, assistant = r1_tokenizer.convert_tokens_to_ids([BOS, EOS, ASSISTANT])
    assert ids[0] == bos and labels[0] == IGNORE_INDEX
    tags = [i for i, token in enumerate(ids) if token == assistant]
    assert len(tags) == 2
    assert all(labels[i] == IGNORE_INDEX and labels[i + 1] == ids[i + 1] for i in tags)
    ends = [i for i, token in enumerate(ids) if token == eos]
    assert ends[-1] == len(ids) - 1 and len(ends) == 2
    assert all(labels[i] == eos for i in ends)


def cot_conversation(record: dict) -> list[dict[str, str]]:
    """A rationale per step in the §2 shape, with code, executor output and the record's
    judgement."""
    turns = []
    for index, step in enumerate(record["steps"]):
        verify: list = [CodeBlock(f"x = {index} * 7\nprint(x)", str(index * 7))]
        if index % 2:
            verify += ["It matches.\n", CodeBlock("print('ok')", "ok\nmore")]
        correct = record["label"] == -1 or index < record["label"]
        turns.append(
            render_rationale(index + 1, f"The paragraph says: {step[:60]}", verify, correct)
        )
    return build_conversation(record["problem"], record["steps"], turns)


def test_equals_axolotl_chat_template_when_code_output_is_trained(r1_tokenizer, processbench_gsm8k):
    """Token for token against axolotl's own strategy, and one BOS, no `<think>`, per row."""
    records = processbench_gsm8k[:24]
    conversations = [
        build_direct_conversation(r["problem"], r["steps"], r["label"]) for r in records
    ]
    conversations += [cot_conversation(r) for r in records]
    ours = strategy(r1_tokenizer, genprm_train_on_code_output=True)
    theirs = chat_template_load(
        r1_tokenizer,
        DictDefault({"sequence_len": 8192, "train_on_inputs": False}),
        {"field_messages": "conversations"},
    )
    bos, think = r1_tokenizer.convert_tokens_to_ids([BOS, "<think>"])
    for messages in conversations:
        row = {"conversations": messages}
        mine, reference = ours.tokenize_row(row), theirs.tokenize_prompt(row)
        assert mine["input_ids"] == reference["input_ids"]
        assert mine["labels"] == reference["labels"]
        assert mine["input_ids"].count(bos) == 1 and think not in mine["input_ids"]


def test_genprm_convert_output_trains_one_judgement_per_turn(
    r1_tokenizer, processbench_gsm8k, tmp_path
):
    records = processbench_gsm8k[:10] + [r for r in processbench_gsm8k if r["label"] == -1][:4]
    source, target = tmp_path / "gsm8k.jsonl", tmp_path / "direct.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    convert = Path(sys.executable).parent / "genprm-convert"
    done = subprocess.run(
        [str(convert), str(source), str(target)], capture_output=True, text=True, check=True
    )

    yes = sum(len(r["steps"]) if r["label"] == -1 else r["label"] for r in records)
    no = sum(r["label"] != -1 for r in records)
    assert f"({yes} Yes turns, {no} No turns)" in done.stdout
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in rows] == [r["id"] for r in records]

    ours = strategy(r1_tokenizer)
    trained_yes = trained_no = 0
    for row in rows:
        messages = row["conversations"]
        assert messages[0] == {"role": "system", "content": SYSTEM_DIRECT}
        turns = [m["content"] for m in messages if m["role"] == "assistant"]
        assert set(turns) <= {judgement_text(True), judgement_text(False)}
        tokens = ours.tokenize_row(row)
        trained = r1_tokenizer.decode([t for t in tokens["labels"] if t != IGNORE_INDEX])
        assert trained == "".join(turn + EOS for turn in turns)
        assert r1_tokenizer.decode(tokens["input_ids"]).count("<output>") == len(turns)
        trained_yes += trained.count(judgement_text(True))
        trained_no += trained.count(judgement_text(False))
    assert (trained_yes, trained_no) == (yes, no)


def test_assistant_turn_with_think_close_fails_naming_the_record(r1_tokenizer):
    """The template keeps only what follows `</think>`: the turn cannot be trained as written."""
    messages = build_direct_conversation("p", ["a"], -1)
    messages[2]["content"] = "Let me check.</think>" + messages[2]["content"]
    with pytest.raises(RecordError, match=r"record id='gsm8k-think': message 2 .*`</think>`"):
        strategy(r1_tokenizer).tokenize_row({"id": "gsm8k-think", "conversations": messages})


def test_another_template_on_this_tokenizer_needs_a_single_token_end_of_turn(r1_tokenizer):
    """ChatML on R1's vocabulary: its <|im_end|> is not a token here, and R1's EOS never ends a
    ChatML turn; both are refused at load time, naming the template."""
    with pytest.raises(ValueError, match=r"`chat_template: chatml` writes '<\|im_end\|>"):
        strategy(r1_tokenizer, chat_template="chatml")
    with pytest.raises(
        ValueError, match=r"`chat_template: chatml`: eot_tokens entry '<\|im_end\|>'"
    ):
        strategy(r1_tokenizer, chat_template="chatml", eot_tokens=["<|im_end|>"])
