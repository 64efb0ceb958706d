"""The export stage: rollout records labelled, judged, filtered and exported; the conversations
are the spec's (§1-2), end at the first wrong step and carry the labels' judgements; the JSONL,
the datasets folder and the card agree; a rerun overwrites; bad records are named; and
``axolotl preprocess`` tokenizes the export with ``type: genprm_train.prompt_strategy``."""

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from data_synthesis.export import ExportError, conversation, export_dataset
from data_synthesis.filter import FilterSettings, FilterStage
from data_synthesis.label import LabelSettings, LabelStage
from genprm.format import (
    SYSTEM_COT,
    CodeBlock,
    build_conversation,
    code_output_spans,
    judgement_text,
    parse_turn,
    render_rationale,
    with_judgement,
)
from tests.support.paths import REPO

BIN = Path(sys.executable).parent
CPU_CONFIG = REPO / "axolotl_configs" / "genprm-smollm2-cpu.yml"
SOURCE = {
    "label": {"method": "rpe", "epsilon": 0.8},
    "rationale": {"model": "Qwen/QwQ-32B", "votes": 4},
    "input": Path("runs/demo/rollout.jsonl"),
}

# (id, problem, steps, mc_initial, mc, the judge's first error)
SOLUTIONS = [
    (
        "gsm-1-0",
        "Tom has 3 boxes of 12 apples and eats 5. How many apples are left?",
        ["Step 1: 3 boxes of 12 apples are 3 * 12 = 36 apples.", "Step 2: 36 - 5 = 31."],
        0.75,
        [0.75, 1.0],
        -1,
    ),
    (
        "gsm-2-0",
        "A shirt costs $20 and is 15% off. What is the sale price?",
        [
            "Step 1: 15% of 20 is 0.15 * 20 = 3.",
            "Step 2: The sale price is 20 + 3 = 23.",
            "Step 3: So the answer is $23.",
        ],
        0.5,
        [0.5, 0.0, 0.0],
        1,
    ),
    (
        "gsm-3-1",
        "What is 2^10 - 24?",
        ["Step 1: 2^10 = 1000.", "Step 2: 1000 - 24 = 976."],
        0.25,
        [0.0, 0.0],
        0,
    ),
    (
        "gsm-4-0",  # the judge disagrees: the filter drops it
        "What is 7 * 8?",
        ["Step 1: 7 * 8 = 54.", "Step 2: The answer is 54."],
        0.5,
        [0.0, 0.0],
        -1,
    ),
    (
        "gsm-5-2",
        "Sara reads 12 pages a day for 5 days, then 20 pages. How many pages in all?",
        [
            "Step 1: In 5 days she reads 12 * 5 = 60 pages.",
            "Step 2: Then she reads 20 more pages.",
            "Step 3: In all 60 + 20 = 70 pages.",
            "Step 4: The answer is 70.",
        ],
        12 / 32,
        [12 / 32, 10 / 32, 1 / 32, 0.0],
        2,
    ),
]


def rationale(step: int, text: str) -> str:
    numbers = re.findall(r"\d+", text.split(":", 1)[1])
    verify: list = [
        CodeBlock(f"values = {numbers}\nprint(values)", str(numbers)),
        "The printed values match the paragraph.\n",
    ]
    return render_rationale(
        step, f"The paragraph says: {text.split(': ', 1)[1]} Check it.", verify, correct=None
    )


def rollout_record(solution) -> dict:
    id_, problem, steps, mc_initial, mc, _ = solution
    return {
        "id": id_,
        "problem": problem,
        "steps": steps,
        "answer": "?",
        "problem_id": id_.rsplit("-", 1)[0],
        "correct": mc[-1] == 1.0,
        "mc": mc,
        "mc_initial": mc_initial,
        "rollouts": [32] * len(steps),
        "k": 32,
    }


def judged(labelled: dict, judge: int) -> dict:
    rationales = [rationale(i + 1, step) for i, step in enumerate(labelled["steps"])]
    if labelled["id"] == "gsm-5-2":
        rationales[3] = None  # after the first error: not needed
    return {
        **labelled,
        "rationales": rationales,
        "judge_first_error": judge,
        "judge_votes": [judge] * 4,
        "rationale_text": "### Paragraph 1\n...",
    }


@pytest.fixture(scope="module")
def kept() -> list[dict]:
    """The pipeline from rollout records on: label, the rationale stage's fields, filter."""
    label, keep = LabelStage(LabelSettings()), FilterStage(FilterSettings())
    records = []
    for solution in SOLUTIONS:
        [labelled] = asyncio.run(label.process(rollout_record(solution))).records
        records += asyncio.run(keep.process(judged(labelled, solution[-1]))).records
    assert [r["id"] for r in records] == ["gsm-1-0", "gsm-2-0", "gsm-3-1", "gsm-5-2"]
    assert [r["first_error"] for r in records] == [-1, 1, 0, 2]
    return records


@pytest.fixture(scope="module")
def exported(kept, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "genprm-data"
    return out, export_dataset(kept, out, SOURCE)


def assistant_turns(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def test_conversation_is_build_conversation_up_to_the_first_error(kept):
    for record in kept:
        judged_steps = len(record["steps"]) if record["first_error"] == -1 else None
        judged_steps = judged_steps or record["first_error"] + 1
        turns = [
            with_judgement(record["rationales"][i], bool(record["labels"][i]))
            for i in range(judged_steps)
        ]
        expected = build_conversation(record["problem"], record["steps"][:judged_steps], turns)
        assert conversation(record) == expected
        assert expected[0] == {"role": "system", "content": SYSTEM_COT}
        assert expected[1]["content"] == record["problem"] + "\n" + record["steps"][0]
        assert len(expected) == 1 + 2 * judged_steps


def test_judgements_close_each_turn_per_label(kept):
    by_id = {record["id"]: conversation(record) for record in kept}
    yes, no = judgement_text(True), judgement_text(False)
    assert [t.endswith(yes) for t in assistant_turns(by_id["gsm-1-0"])] == [True, True]
    assert [t.endswith(no) for t in assistant_turns(by_id["gsm-2-0"])] == [False, True]
    assert [t.endswith(no) for t in assistant_turns(by_id["gsm-3-1"])] == [True]
    sara = assistant_turns(by_id["gsm-5-2"])
    assert [parse_turn(t).judgement for t in sara] == [True, True, False]
    # the rationale text is kept, with its executed code
    assert sara[0].startswith("<analyze>\nLet's analyze the Paragraph 1 step by step: ")
    assert parse_turn(sara[0]).code_blocks == [
        CodeBlock("values = ['5', '12', '5', '60']\nprint(values)", "['5', '12', '5', '60']")
    ]
    # the conversation ends at the first wrong step: the user turns are steps 1-3 only
    users = [m["content"] for m in by_id["gsm-5-2"] if m["role"] == "user"]
    assert users[1:] == kept[3]["steps"][1:3]


def test_jsonl_has_exactly_the_released_shape(exported, kept):
    out, _ = exported
    lines = (out / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == [{"id": r["id"], "conversations": conversation(r)} for r in kept]
    for row in rows:
        assert list(row) == ["id", "conversations"]
        assert all(list(message) == ["role", "content"] for message in row["conversations"])


def test_datasets_folder_round_trips(exported):
    out, _ = exported
    dataset = load_from_disk(str(out / "dataset"))
    rows = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    assert dataset.column_names == ["id", "conversations"]
    assert dataset.to_list() == rows


def test_summary_and_card_counts(exported):
    out, summary = exported
    assert summary == {
        "conversations": 4,
        "solution_steps": 11,
        "turns": 8,
        "yes_turns": 5,
        "no_turns": 3,
        "all_correct": 1,
    }
    card = (out / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card, re.MULTILINE))
    assert table["conversations"] == "4"
    assert table["solutions judged correct throughout"] == "1"
    assert table["steps of the solutions"] == "11"
    assert table["steps judged (assistant turns)"] == "8"
    assert table["`Yes` judgements"] == "5"
    assert table["`No` judgements"] == "3 (37.5% of turns)"


def yaml_blocks(card: str) -> list:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", card, re.DOTALL)]


def test_card_quotes_the_source_and_the_axolotl_config(exported):
    out, _ = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    front_matter = yaml.safe_load(card.split("---\n")[1])
    assert front_matter["configs"] == [
        {"config_name": "default", "data_files": "conversations.jsonl"}
    ]
    settings, snippet = yaml_blocks(card)
    assert settings == {**SOURCE, "input": "runs/demo/rollout.jsonl"}
    assert snippet["plugins"] == ["genprm_train.GenPRMPlugin"]
    assert snippet["datasets"] == [
        {
            "path": str((out / "conversations.jsonl").resolve()),
            "ds_type": "json",
            "type": "genprm_train.prompt_strategy",
        }
    ]


def test_rerun_overwrites_cleanly(kept, tmp_path):
    out = tmp_path / "data"
    export_dataset(kept, out, SOURCE)
    summary = export_dataset(kept[:2], out, {"run": 2})
    assert summary["conversations"] == 2
    assert len((out / "conversations.jsonl").read_text().splitlines()) == 2
    assert len(load_from_disk(str(out / "dataset"))) == 2
    assert yaml_blocks((out / "README.md").read_text())[0] == {"run": 2}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "conversations.jsonl", "dataset"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["rationales"].__setitem__(1, None), "step 1 has no rationale"),
        (lambda r: r.pop("problem"), "no 'problem' field"),
        (lambda r: r.__setitem__("first_error", 2), "`first_error` 2 is not the first 0"),
        (lambda r: r["labels"].pop(), "one entry per step"),
        (
            lambda r: r["rationales"].__setitem__(
                0, render_rationale(1, "Fine.", [CodeBlock("print(3)", "3")], correct=False)
            ),
            "rationale judges the step wrong but its label says correct",
        ),
    ],
)
def test_bad_record_is_named_and_nothing_is_written(kept, tmp_path, change, message):
    bad = json.loads(json.dumps(kept[1]))
    change(bad)
    with pytest.raises(ExportError, match=rf"record id='gsm-2-0': .*{message}"):
        export_dataset([kept[0], bad], tmp_path / "data", SOURCE)
    assert not (tmp_path / "data").exists()


def test_nothing_to_export_gives_empty_files_and_says_so(tmp_path):
    summary = export_dataset([], tmp_path / "data", SOURCE)
    assert summary["conversations"] == 0
    assert (tmp_path / "data" / "conversations.jsonl").read_text() == ""
    assert len(load_from_disk(str(tmp_path / "data" / "dataset"))) == 0
    assert "| conversations | 0 |" in (tmp_path / "data" / "README.md").read_text()


def without_code_outputs(text: str) -> str:
    for start, end in reversed(code_output_spans(text)):
        text = text[:start] + text[end:]
    return text


@pytest.mark.slow
def test_axolotl_preprocess_trains_on_the_export(exported, smollm2_path, smollm2_tokenizer):
    """`axolotl preprocess` with the CPU config, the export as its dataset: every conversation is
    tokenized by the chat template, and exactly the assistant turns (less the executor's
    [Code Output] blocks) and their end-of-turn tokens carry loss."""
    out, _ = exported
    work = out.parent / "axolotl"
    work.mkdir()
    cfg = yaml.safe_load(CPU_CONFIG.read_text())
    cfg.update(
        base_model=str(smollm2_path),
        datasets=[{**cfg["datasets"][0], "path": str(out / "conversations.jsonl")}],
        dataset_prepared_path=str(work / "prepared"),
        output_dir=str(work / "out"),
    )
    (work / "config.yml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WANDB_DIR": str(work)}
    result = subprocess.run(
        [str(BIN / "axolotl"), "preprocess", str(work / "config.yml")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"

    [prepared] = [p.parent for p in (work / "prepared").glob("*/dataset_info.json")]
    rows = load_from_disk(str(prepared)).to_list()
    conversations = [
        json.loads(line)["conversations"]
        for line in (out / "conversations.jsonl").read_text().splitlines()
    ]
    assert len(rows) == len(conversations)
    eot = smollm2_tokenizer.eos_token
    expected = {}
    for messages in conversations:
        ids = smollm2_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        trained = "".join(without_code_outputs(turn) + eot for turn in assistant_turns(messages))
        expected[tuple(ids)] = trained
    for row in rows:
        assert tuple(row["input_ids"]) in expected
        trained_ids = [label for label in row["labels"] if label != -100]
        assert trained_ids, "no trainable labels"
        assert smollm2_tokenizer.decode(trained_ids) == expected[tuple(row["input_ids"])]
    assert {tuple(row["input_ids"]) for row in rows} == set(expected)
