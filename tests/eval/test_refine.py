"""``genprm-eval refine`` (spec §7): the refine conversation character for character (against
the ``messages = [...]`` block of the spec itself), the critique extraction, the loop with
scripted policy and verifier (refined, re-scored, stands when accepted, at most 3 turns), the
metrics, the command's outputs and resuming, and a small run against a vLLM server with the
embedded model."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eval.refine.cli import main
from eval.refine.prompts import (
    QUOTE,
    QWEN_SYSTEM,
    REFINE_REQUEST,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    USER_SUFFIX,
    extract_critique,
    policy_messages,
    refine_messages,
)
from eval.refine.report import refine_metrics
from eval.refine.results import start
from eval.refine.samples import read_samples
from eval.refine.turns import MAX_TURNS, Policy, Refiner, refine_all
from genprm.format import ANALYZE_END, ANALYZE_PREFIX, OUTPUT_END, OUTPUT_PREFIX, SYSTEM_COT
from genprm.paths import data_dir
from genprm.policy import AnswerGrader
from genprm.problems import load_problems
from genprm.runs import ResumeError
from genprm.testing import ScriptedEngine
from genprm.testing.scripted import CharTokenizer
from genprm.verifier import GenPRMVerifier
from tests.support.judgements import judgement
from tests.support.paths import REPO, SPECS

SPEC_PATH = SPECS / "genprm-format.md"

pytestmark = pytest.mark.sandbox(timeout=10.0)

# Hand-written copies of §7's strings.
QWEN = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
REQUEST = (
    "There might be some problem in this paragraph of your reasoning, please rethink and refine "
    "your answer:\n"
)


def spec_section_7() -> str:
    if not SPEC_PATH.is_file():
        pytest.skip(f"spec not found at {SPEC_PATH}")
    text = SPEC_PATH.read_text(encoding="utf-8")
    return text[text.index("## 7. Critique-refine") :]


def spec_messages(problem: str, steps: list[str], idx: int, critique: str) -> list[dict]:
    """The spec's own ``messages = [...]`` block of §7, evaluated with these values."""
    block = re.search(r"```\n(messages = \[.*?\n\])\n```", spec_section_7(), re.DOTALL)
    assert block, "no messages block in spec §7"
    source = block.group(1).split("=", 1)[1].strip()
    names = {"problem": problem, "steps": steps, "idx": idx, "critique": critique}
    return eval(compile(source, "spec §7", "eval"), {"__builtins__": {}}, names)


def chatml(messages: list[dict]) -> str:
    """What the scripted engine receives for ``messages`` (CharTokenizer's ChatML)."""
    return CharTokenizer().apply_chat_template(messages, tokenize=False)


# -- the prompts ----------------------------------------------------------------------------


def test_the_constants_are_the_spec_strings():
    assert (QWEN_SYSTEM, USER_SUFFIX, REFINE_REQUEST) == (
        QWEN,
        SUFFIX,
        REQUEST,
    )
    assert QUOTE == ">"
    assert (TEMPERATURE, TOP_P, TOP_K, MAX_TURNS) == (0.7, 0.8, 20, 3)
    section = spec_section_7()
    assert json.dumps(QWEN) in section and json.dumps(REQUEST) in section
    assert json.dumps(SUFFIX) in section
    assert "temperature 0.7, top_p 0.8, top_k 20" in section and "up to 3 turns" in section


@pytest.mark.parametrize("index", [0, 2])
def test_the_refine_messages_equal_the_spec_block(index):
    problem = "Let $x$ be 3: what is $x^2$?"
    steps = ["We square: $x^2$.", "So $3 \\cdot 3 = 6$.", "The answer is $\\boxed{6}$."]
    critique = "The product is 9, not 6."
    expected = spec_messages(problem, steps, index, critique)
    assert refine_messages(problem, steps, index, critique) == expected
    assert expected[-1]["content"] == REQUEST + ">" + steps[index] + "\n\n" + critique
    assert expected[0]["content"] == QWEN
    assert policy_messages(problem) == expected[:2]


def test_another_policy_gets_its_system_prompt_or_none():
    messages = refine_messages("P", ["a", "b"], 1, "c", system="You are helpful.")
    assert messages[0] == {"role": "system", "content": "You are helpful."}
    assert [m["role"] for m in refine_messages("P", ["a"], 0, "c", system="")] == [
        "user",
        "assistant",
        "user",
    ]


def test_the_critique_is_the_turn_after_its_first_colon_stripped():
    turn = (
        ANALYZE_PREFIX.format(t=3)
        + "the sum is off: 2 + 2 is 4.\n"
        + ANALYZE_END
        + OUTPUT_PREFIX
        + "{No}$\n"
        + OUTPUT_END
    )
    assert extract_critique(turn) == (
        "the sum is off: 2 + 2 is 4.\n</analyze>\n<output>\n**Judgement**: $\\boxed{No}$\n</output>"
    )
    direct = OUTPUT_PREFIX + "{No}$\n" + OUTPUT_END
    assert extract_critique(direct) == "$\\boxed{No}$\n</output>"
    assert extract_critique("  nothing to split \n") == "nothing to split"


# -- the loop, scripted ---------------------------------------------------------------------

PROBLEM_A, PROBLEM_B, PROBLEM_C = "What is 2+3?", "What is 4+1?", "What is 1+1?"
A0 = "Add 2 and 3.\n\n2 + 3 = 6, WRONG.\n\nSo \\boxed{6}."
A1 = "Add 2 and 3.\n\n2 + 3 = 5.\n\nSo \\boxed{5}."
B0 = "Think.\n\nWRONG guess \\boxed{7}."
B1 = "Think again.\n\nWRONG guess \\boxed{8}."
B2 = "Think more.\n\nWRONG guess, \\boxed{8}."
B3 = "Final.\n\nWRONG but \\boxed{5}."
C0 = "1 + 1 = 2.\n\n\\boxed{2}"


def steps(text: str) -> list[str]:
    return text.split("\n\n")


def analysis(t: int, wrong: bool) -> str:
    return f"paragraph {t} is {'wrong' if wrong else 'fine'}: reasons.\n{ANALYZE_END}"


def critique(t: int) -> str:
    return analysis(t, True) + OUTPUT_PREFIX + "{No}$\n" + OUTPUT_END.strip()


def verifier_script(prompt: str, index: int):
    """cot mode: a step whose text says WRONG is judged No (p(Yes) = 0.1), others Yes (0.9)."""
    t = int(re.findall(r"Let's analyze the Paragraph (\d+)", prompt)[-1])
    step = prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
    wrong = "WRONG" in step
    if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
        return analysis(t, wrong)
    return judgement(0.1 if wrong else 0.9)


def policy_script() -> dict[str, str]:
    """The policy's answers, keyed by the exact §7 prompts (anything else fails)."""
    answers = {chatml(spec_messages(PROBLEM_A, ["x"], 0, "")[:2]): A0}
    for problem, before, after in [
        (PROBLEM_A, A0, A1),
        (PROBLEM_B, B0, B1),
        (PROBLEM_B, B1, B2),
        (PROBLEM_B, B2, B3),
    ]:
        answers[chatml(spec_messages(problem, steps(before), 1, critique(2)))] = after
    return answers


def refine_prompts() -> list[str]:
    """Every prompt the policy must receive, in one problem's order."""
    return list(policy_script())


RECORDS = [
    {"id": "a", "problem": PROBLEM_A, "answer": "5"},
    {"id": "b", "problem": PROBLEM_B, "answer": "5", "text": B0},
    {"id": "c", "problem": PROBLEM_C, "answer": "2", "text": C0},
]


def scripted_refiner(sandbox, max_turns=3):
    policy_engine = ScriptedEngine(policy_script())
    verifier = GenPRMVerifier(ScriptedEngine(verifier_script), mode="cot")
    policy = Policy(policy_engine)
    return Refiner(verifier, policy, AnswerGrader(sandbox), max_turns), policy_engine


def run_lines(refiner) -> dict[str, dict]:
    written: list[bytes] = []
    asyncio.run(refine_all(refiner, RECORDS, written.append, concurrency=1))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in written)
    return {line["id"]: line for line in map(json.loads, written)}


def test_a_rejected_solution_is_refined_rescored_and_stands_once_accepted(sandbox):
    refiner, policy_engine = scripted_refiner(sandbox)
    lines = run_lines(refiner)
    assert policy_engine.prompts == refine_prompts()  # the §7 prompts, in order
    a = lines["a"]
    assert [turn["text"] for turn in a["turns"]] == [A0, A1]
    first, second = a["turns"]
    assert first["steps"] == steps(A0) and first["prediction"] == 1
    assert first["step_rewards"] == pytest.approx([0.9, 0.1])  # scoring stops at the rejection
    assert (first["final_answer"], first["correct"]) == ("6", False)
    assert second["step_rewards"] == pytest.approx([0.9, 0.9, 0.9]) and second["prediction"] == -1
    assert (second["final_answer"], second["correct"]) == ("5", True)
    assert (second["refined_step"], second["critique"]) == (1, critique(2))
    assert lines["c"]["turns"][0]["prediction"] == -1 and len(lines["c"]["turns"]) == 1


def test_at_most_three_turns(sandbox):
    lines = run_lines(scripted_refiner(sandbox)[0])
    b = lines["b"]["turns"]
    assert [turn["text"] for turn in b] == [B0, B1, B2, B3]  # turn 0 and three refinements
    assert [turn["prediction"] for turn in b] == [1, 1, 1, 1]  # the last is scored, not refined
    assert [turn["correct"] for turn in b] == [False, False, False, True]
    fields = {"text", "steps", "step_rewards", "prediction", "final_answer", "correct"}
    assert all(fields <= set(turn) for line in lines.values() for turn in line["turns"])
    one = run_lines(scripted_refiner(sandbox, max_turns=1)[0])
    assert [len(one[i]["turns"]) for i in "abc"] == [2, 2, 1]


def test_the_metrics_per_turn(sandbox):
    lines = run_lines(scripted_refiner(sandbox)[0])
    metrics = refine_metrics([lines[i] for i in "abc"])
    assert metrics["turns"] == [0, 1, 2, 3] and metrics["n"] == 3
    assert metrics["accuracy"] == pytest.approx([100 / 3, 200 / 3, 200 / 3, 100.0])
    assert metrics["refined"] == [0, 2, 1, 1]
    assert metrics["changed"] == [0, 2, 0, 1]  # 6->5, 7->8 | 8->8 | 8->5
    assert metrics["fixed"] == [0, 1, 0, 1] and metrics["broken"] == [0, 0, 0, 0]
    assert refine_metrics([], 2)["accuracy"] == [0.0, 0.0, 0.0]


# -- the command, with scripted engines -----------------------------------------------------


def one_engine_for_both():
    """One scripted engine that answers the policy's prompts and the verifier's."""
    answers = policy_script()

    def script(prompt: str, index: int):
        if SYSTEM_COT in prompt:
            return verifier_script(prompt, index)
        return answers[prompt]

    return ScriptedEngine(script)


def command(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    samples = tmp_path / "samples.jsonl"
    rows = [{**r, "text": r.get("text", A0)} for r in RECORDS]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["refine", "--samples", str(samples), "--mode", "cot", "--sandbox-workers", "2",
            "--budget", "2048", "--max-tokens", "4096", "--out", str(out), *extra]  # fmt: skip


def test_the_command_writes_the_outputs_and_resumes(tmp_path, monkeypatch, capsys, read_wandb_run):
    monkeypatch.setattr("genprm.backends.make_engine", lambda **options: one_engine_for_both())
    out = tmp_path / "run"
    assert main(command(tmp_path, out, "--wandb-project", "genprm-tests")) == 0
    [wandb_run] = (out / "wandb").glob("offline-run-*")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx([100 / 3, 200 / 3, 200 / 3, 100.0])
    assert metrics["changed"] == [0, 2, 0, 1] and metrics["refined"] == [0, 2, 1, 1]
    assert (out / "accuracy_per_turn.png").read_bytes().startswith(b"\x89PNG")
    history, _ = read_wandb_run(wandb_run)
    assert history["accuracy"] == pytest.approx(metrics["accuracy"])
    assert history["turn"] == [0, 1, 2, 3]
    report = (out / "report.md").read_text()
    assert "| 3 | 100.0 | 1 | 1 |" in report
    assert json.loads((out / "settings.json").read_text())["turns"] == 3
    results = out / "refine.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    assert sorted(json.loads(line)["id"] for line in lines) == ["a", "b", "c"]
    results.write_bytes(lines[0] + lines[1][:20])  # killed in the middle of a line
    assert main(command(tmp_path, out, "--wandb-project", "genprm-tests")) == 0
    assert "1 problems already in" in capsys.readouterr().err
    after = results.read_bytes()
    assert after.startswith(lines[0])
    assert sorted(json.loads(line)["id"] for line in after.splitlines()) == ["a", "b", "c"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert main(command(tmp_path, out, "--turns", "2")) == 2
    assert "turns 3 -> 2" in capsys.readouterr().err


def test_a_changed_setting_is_refused(tmp_path):
    (tmp_path / "refine.jsonl").write_text('{"id": "x", "answer": "1", "turns": [{}]}\n')
    (tmp_path / "settings.json").write_text('{"turns": 3}')
    assert start(tmp_path, {"turns": 3}) == {"x"}
    with pytest.raises(ResumeError, match="turns 3 -> 1"):
        start(tmp_path, {"turns": 1})


def test_a_bad_samples_line_names_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a", "problem": "p", "answer": "1", "text": "t"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        read_samples(path)
    path.write_text(
        "".join(
            json.dumps({"id": i, "problem": "p", "answer": "1", "text": t}) + "\n"
            for i, t in [("a", "x"), ("a", "y"), ("b", "z")]
        )
    )
    records, repeated = read_samples(path)
    assert [(r["id"], r["text"]) for r in records] == [("a", "x"), ("b", "z")] and repeated == 1
    bon = [("p-0", "p", "x"), ("p-1", "p", "y"), ("q-0", "q", "z")]  # Best-of-N's samples
    path.write_text(
        "".join(
            json.dumps({"id": i, "problem_id": p, "problem": "p", "answer": "1", "text": t}) + "\n"
            for i, p, t in bon
        )
    )
    records, repeated = read_samples(path)
    assert [(r["id"], r["text"]) for r in records] == [("p", "x"), ("q", "z")] and repeated == 1


# -- the real engine ------------------------------------------------------------------------


def check_run(out: Path, ids: list[str], turns: int) -> list[dict]:
    """A complete, self-consistent run folder (values not asserted)."""
    lines = [json.loads(line) for line in (out / "refine.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(ids)
    for line in lines:
        assert 1 <= len(line["turns"]) <= turns + 1
        for k, turn in enumerate(line["turns"]):
            assert turn["steps"] == [s.strip() for s in turn["text"].split("\n\n") if s.strip()]
            rewards = turn["step_rewards"]
            assert all(0.0 <= r <= 1.0 for r in rewards)
            if turn["prediction"] is not None:
                assert turn["prediction"] == next((i for i, r in enumerate(rewards) if r < 0.5), -1)
            if k + 1 < len(line["turns"]):  # sent back: its first rejected step
                assert turn["prediction"] >= 0
                assert line["turns"][k + 1]["refined_step"] == turn["prediction"]
        last = line["turns"][-1]
        assert (
            len(line["turns"]) == turns + 1 or last["prediction"] in (-1, None) or "error" in line
        )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["turns"] == list(range(turns + 1)) and metrics["n"] == len(ids)
    assert metrics["refined"][0] == 0 and metrics["changed"][0] == 0
    for k in range(1, turns + 1):
        assert metrics["refined"][k] == sum(len(line["turns"]) > k for line in lines)
    assert (out / "accuracy_per_turn.png").exists() and (out / "report.md").exists()
    return lines


def refine_on_server(server, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "eval.refine", "refine", "--engine", "openai",
         "--base-url", server.base_url, "--mode", "direct", "--max-tokens", "48",
         "--budget", "24", "--sandbox-workers", "1", "--seed", "0", "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    assert "accuracy" in done.stdout
    return done


@pytest.mark.vllm_server
def test_a_small_refine_run_on_a_vllm_server(vllm_servers, vllm_api_key, tmp_path):
    # The policy writes the first solutions of 2 MATH-500 problems.
    refine_on_server(vllm_servers[0], tmp_path / "policy", "--limit", "2")
    check_run(tmp_path / "policy", ["math500-test-0", "math500-test-1"], 3)
    # A given wrong solution of many paragraphs (likelier to be sent back), one turn.
    [record], _ = load_problems(str(data_dir() / "math500" / "test.jsonl"), limit=1)
    wrong = "\n\n".join(f"Step {i}: so 2 + {i} = {i + 3}." for i in range(6))
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({**record, "text": wrong + "\n\n\\boxed{7}"}) + "\n")
    out = tmp_path / "given"
    refine_on_server(vllm_servers[0], out, "--samples", str(samples), "--turns", "1")
    check_run(out, [record["id"]], 1)
