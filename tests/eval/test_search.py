"""``genprm-eval search``: the search core with fixed scores (which beams are kept at each depth,
what reaches the pool, DVTS subtrees kept apart, ties, the step limit, beams that cannot be
extended), a scripted run of the runner (exact steps, rewards, token counts, metrics and the
equal-budget Best-of-N; resuming; settings changes refused), and the real command against a
vLLM server on 127.0.0.1 with the embedded model."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from eval.bon import samples as bon_samples
from eval.cli import main
from eval.search import runner
from eval.search.solutions import STEP_MARKER, ProblemSearch, sample_record
from eval.search.tree import search
from genprm.aggregate import AGGREGATIONS
from genprm.backends.types import SamplingParams
from genprm.format import OUTPUT_PREFIX, SYSTEM_POLICY
from genprm.policy import policy_context
from genprm.runs import ResumeError, appender
from genprm.steps import split_policy_steps
from genprm.testing import ScriptedEngine
from genprm.testing.scripted import CharTokenizer
from genprm.verifier import GenPRMVerifier
from tests.support.eval_commands import MATH500, eval_command, run_eval
from tests.support.judgements import judgement, verdict

# ------------------------------------------------------------------------- the search core


@dataclass(frozen=True)
class Node:
    name: str
    finished: bool = False


class Tree:
    """A search problem given by tables: a node's children are its name plus "0", "1", ...;
    ``values`` by name, ``finished`` names, ``stuck`` names that expand cannot extend. Every
    call is recorded."""

    def __init__(self, values: dict, finished=(), stuck=()):
        self.values, self.finished, self.stuck = values, set(finished), set(stuck)
        self.expanded: list[tuple[list[str], int]] = []
        self.valued: list[list[str]] = []

    async def expand(self, parents: list[Node], width: int) -> list[list[Node]]:
        self.expanded.append(([parent.name for parent in parents], width))
        return [
            []
            if parent.name in self.stuck
            else [
                Node(name, name in self.finished)
                for name in (f"{parent.name}{i}" for i in range(width))
            ]
            for parent in parents
        ]

    async def value(self, candidates: list[Node]) -> list[float]:
        self.valued.append([candidate.name for candidate in candidates])
        return [self.values[candidate.name] for candidate in candidates]

    def run(self, method: str, n: int, width: int, max_steps: int):
        pool = asyncio.run(
            search(
                Node(""), self.expand, self.value,
                method=method, n=n, width=width, max_steps=max_steps,
            )
        )  # fmt: skip
        return [(final.candidate.name, final.subtree, final.value) for final in pool]


def test_beam_search_keeps_the_best_beams_and_fills_the_pool():
    tree = Tree(
        {
            **{"0": 0.1, "1": 0.9, "2": 0.5, "3": 0.5},  # 2 and 3 tie: 2 (earlier) is kept
            **{"10": 0.2, "11": 0.8, "20": 0.95, "21": 0.3},  # 10 finishes
            **{"110": 0.4, "111": 0.7, "200": 0.7, "201": 0.6},  # the step limit
        },
        finished={"10"},
    )
    pool = tree.run("beam", n=4, width=2, max_steps=3)
    assert tree.expanded == [([""], 4), (["1", "2"], 2), (["11", "20"], 2)]
    assert tree.valued == [["0", "1", "2", "3"], ["10", "11", "20", "21"],
                           ["110", "111", "200", "201"]]  # fmt: skip
    # 10 finished at depth 2; at the limit three places are left for four: 110 (0.4) is out.
    assert pool == [("10", 0, 0.2), ("111", 0, 0.7), ("200", 0, 0.7), ("201", 0, 0.6)]


def test_beam_search_stops_once_the_pool_is_full():
    tree = Tree(
        {"0": 0.5, "1": 0.6, "2": 0.7, "3": 0.8, "20": 0.1, "21": 0.2, "30": 0.3, "31": 0.9},
        finished={"0", "1", "21", "31"},
    )
    pool = tree.run("beam", n=4, width=2, max_steps=10)
    # depth 1: 0 and 1 finish, 2 and 3 are the beams; depth 2: 21 and 31 fill the pool.
    assert tree.expanded == [([""], 4), (["2", "3"], 2)]
    assert [name for name, _, _ in pool] == ["0", "1", "21", "31"]


def test_a_beam_that_cannot_be_extended_joins_the_pool():
    tree = Tree({"0": 0.9, "1": 0.8, "2": 0.1, "3": 0.2, "00": 0.5, "01": 0.4}, stuck={"1"})
    pool = tree.run("beam", n=4, width=2, max_steps=2)
    assert tree.expanded == [([""], 4), (["0", "1"], 2)]
    # 1 is stuck (its prompt no longer fits): it joins the pool; the step limit ends 00, 01.
    assert pool == [("1", 0, 0.8), ("00", 0, 0.5), ("01", 0, 0.4)]


def test_dvts_searches_each_subtree_on_its_own():
    tree = Tree(
        {
            **{"0": 0.9, "1": 0.1},  # two subtrees, however good their first steps
            **{"00": 0.1, "01": 0.2, "10": 0.9, "11": 0.8},  # 10 finishes
            **{"010": 0.3, "011": 0.6, "110": 0.2, "111": 0.7},
        },
        finished={"10"},
    )
    pool = tree.run("dvts", n=4, width=2, max_steps=3)
    # Subtree 1's beam is 01 although 10 and 11 (subtree 1) value higher: no competition.
    assert tree.expanded == [([""], 2), (["0", "1"], 2), (["01", "11"], 2)]
    assert pool == [
        ("010", 0, 0.3), ("011", 0, 0.6),  # subtree 0: both of the last depth
        ("10", 1, 0.9), ("111", 1, 0.7),  # subtree 1: 10, then one place left: 111 beats 110
    ]  # fmt: skip


def test_search_settings_are_checked():
    tree = Tree({})
    with pytest.raises(ValueError, match="multiple of the beam width"):
        tree.run("beam", n=5, width=2, max_steps=3)
    with pytest.raises(ValueError, match="method"):
        tree.run("best", n=4, width=2, max_steps=3)


# ----------------------------------------------------------------------- a scripted run

PROBLEMS = [
    {"id": "p1", "problem": "What is 2 + 3?", "answer": "5"},
    {"id": "p2", "problem": "What is 3 + 4?", "answer": "7"},
]
# The policy's steps by path (the sample index at each depth): (reward, how it ends[, answer]).
# "go": the policy starts the next step; "answer": a boxed answer; "end": end of sequence.
STEPS = {
    "p1": {
        "0": (0.3, "go"), "1": (0.9, "go"), "2": (0.6, "go"), "3": (0.6, "go"),
        "10": (0.2, "answer", "4"), "11": (0.8, "go"), "20": (0.95, "go"), "21": (0.4, "go"),
        "110": (0.5, "answer", "5"), "111": (0.65, "go"), "200": (0.7, "answer", "5"),
        "201": (0.6, "end"),
    },
    "p2": {
        "0": (0.9, "answer", "7"), "1": (0.3, "answer", "8"), "2": (0.8, "answer", "7"),
        "3": (0.5, "end"),
    },
}  # fmt: skip
# Best-of-N's free-text samples: all of one length (one token per character).
BON = [f"Try {i}. [0.5]\n\n\\boxed{{{5 if i % 5 == 0 else 4}}} [0.{i + 1}]" for i in range(8)]
SETTINGS = {"method": "beam", "n": 4, "beam_width": 2, "max_steps": 3, "bon_samples": 8}


def step_generation(problem_id: str, path: str) -> str:
    reward, how, *answer = STEPS[problem_id][path]
    text = f"n{path} [{reward}]"
    if how == "answer":
        text += f" so \\boxed{{{answer[0]}}}."
    return text + ("\nStep 9: more" if how == "go" else "")


def generated_tokens(problem_id: str, path: str) -> int:
    """What the scripted engine counts for a step: up to the end of the step marker."""
    text = step_generation(problem_id, path)
    return text.index(STEP_MARKER) + len(STEP_MARKER) if STEP_MARKER in text else len(text)


def script(prompt: str, index: int):
    if SYSTEM_POLICY in prompt:
        problem = next(p for p in PROBLEMS if p["problem"] in prompt)
        tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
        if not tail:  # Best-of-N's prompt
            return BON[index]
        parents = re.findall(r"Step \d+: n(\d+) ", tail)
        return step_generation(problem["id"], (parents[-1] if parents else "") + str(index))
    assert prompt.endswith(OUTPUT_PREFIX), prompt[-200:]
    user = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)[-1]
    p = float(re.findall(r"\[([0-9.]+)\]", user)[-1])
    return judgement(p)


class ExactGrader:
    """String equality instead of math-verify (the real grader runs in the server test)."""

    async def correct(self, answers, reference):
        return [answer == reference for answer in answers]


def run_scripted(out: Path, engine: ScriptedEngine, settings=SETTINGS) -> dict:
    runner.start(out, settings)
    verifier = GenPRMVerifier(engine, mode="direct")
    done = runner.searched(out)
    pending = [problem for problem in PROBLEMS if problem["id"] not in done]
    step_params = bon_samples.policy_params(1, 0.7, 64, 0)
    bon_params = bon_samples.policy_params(8, 0.7, 192, 0)

    async def work():
        await runner.search_problems(
            pending, engine, verifier, ExactGrader(), step_params, appender(out / runner.SEARCH),
            method="beam", n=4, width=2, max_steps=3,
        )  # fmt: skip
        budgets = {pid: r["policy_tokens"] for pid, r in runner.searched(out).items()}
        return await runner.compare_bon(
            out / runner.BON_DIR, PROBLEMS, budgets, 8, engine, verifier, ExactGrader(),
            bon_params,
        )  # fmt: skip

    bon = asyncio.run(work())
    records = runner.searched(out)
    ordered = [records[problem["id"]] for problem in PROBLEMS]
    return runner.finish(out, ordered, settings, "scripted", 32, 0, bon)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_scripted_beam_search_run(tmp_path):
    engine = ScriptedEngine(script)
    metrics = run_scripted(tmp_path, engine)
    samples = {sample["id"]: sample for sample in read_lines(tmp_path / "samples.jsonl")}
    assert list(samples) == [f"p{i}-{k}" for i in (1, 2) for k in range(4)]
    p1 = [samples[f"p1-{k}"] for k in range(4)]
    assert [s["steps"][-1].split(" [")[0] for s in p1] == [
        "Step 2: n10", "Step 3: n111", "Step 3: n200", "Step 3: n201",
    ]  # fmt: skip
    assert p1[2]["steps"] == ["Step 1: n2 [0.6]", "Step 2: n20 [0.95]",
                              "Step 3: n200 [0.7] so \\boxed{5}."]  # fmt: skip
    assert p1[2]["step_rewards"] == pytest.approx([0.6, 0.95, 0.7])
    assert [s["finish"] for s in p1] == ["answer", "step_limit", "answer", "end"]
    assert [s["final_answer"] for s in p1] == ["4", None, "5", None]
    assert [s["correct"] for s in p1] == [False, False, True, False]
    assert p1[1]["tokens"] == sum(generated_tokens("p1", path) for path in ("1", "11", "111"))
    for sample in samples.values():
        assert split_policy_steps(sample["text"]) == sample["steps"]
        assert len(sample["step_rewards"]) == len(sample["steps"])

    # Each step scored once, continuing its parent's verifier state: 12 + 4 requests in all.
    policy = [p for p in engine.prompts if SYSTEM_POLICY in p]
    verifier = [p for p in engine.prompts if p.endswith(OUTPUT_PREFIX)]
    bon_steps = (6 + 2) * 2  # the kept Best-of-N samples (below), 2 paragraphs each
    assert len(policy) == 1 + 2 + 2 + 1 + 2  # p1: root, 2 beams x 2 depths; p2: root; Best-of-N
    assert len(verifier) == 12 + 4 + bon_steps
    lines = {line["problem_id"]: line for line in read_lines(tmp_path / runner.SEARCH)}
    p1_line, p2_line = lines["p1"], lines["p2"]  # written as they finish: p2 first
    assert p1_line["policy_tokens"] == sum(generated_tokens("p1", path) for path in STEPS["p1"])
    for problem_id, line in lines.items():
        judged = [verdict(step[0]) for step in STEPS[problem_id].values()]
        assert line["verifier_tokens"] == sum(map(len, judged))

    assert metrics["n"] == [1, 2, 4]
    assert metrics["single_sample"] == pytest.approx((25.0 + 50.0) / 2)
    # p1 at n = 4: last picks 200 (0.7, right); min and mean pick 111 (0.65 / 0.783, wrong);
    # majority: "4" and "5" once each, the first wins (wrong). p2: 0 (0.9, "7") everywhere.
    assert metrics["best_of_n"]["last"][-1] == 100.0
    assert metrics["best_of_n"]["min"][-1] == metrics["best_of_n"]["mean"][-1] == 50.0
    assert metrics["majority"][-1] == 50.0 and metrics["pass_at_n"][-1] == 100.0
    tokens = [p1_line["policy_tokens"], p2_line["policy_tokens"]]
    assert metrics["policy_tokens_per_problem"] == sum(tokens) / 2
    assert (
        metrics["verifier_tokens_per_problem"]
        == (lines["p1"]["verifier_tokens"] + lines["p2"]["verifier_tokens"]) / 2
    )

    # Best-of-N keeps, per problem, the first samples within the search's policy tokens.
    kept = [min(8, budget // len(BON[0])) for budget in tokens]
    assert kept == [6, 2]
    budget = metrics["equal_budget"]
    assert budget["bon"]["samples_per_problem"] == sum(kept) / 2
    assert budget["bon"]["policy_tokens_per_problem"] == sum(kept) * len(BON[0]) / 2
    assert budget["search"]["samples_per_problem"] == 4
    assert budget["search"]["policy_tokens_per_problem"] == sum(tokens) / 2
    # Best-of-N, all kept samples: 5 at 0 and 5 (p1: right), 4 elsewhere (p2: always wrong);
    # the last paragraph's reward grows with the index: p1 picks 5 (right), p2 picks 1.
    assert budget["bon"]["pass_at_n"] == 50.0
    assert budget["bon"]["best_of_n"]["last"] == 50.0 and budget["bon"]["n"] == 6
    assert set(budget["search"]["best_of_n"]) == set(AGGREGATIONS)
    scored = read_lines(tmp_path / runner.BON_DIR / "scores.jsonl")
    assert sorted(line["id"] for line in scored) == [f"p1-{k}" for k in range(6)] + ["p2-0", "p2-1"]
    assert len(read_lines(tmp_path / runner.BON_DIR / "samples.jsonl")) == 16
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    report = (tmp_path / "report.md").read_text()
    assert "## Equal policy-token budget" in report
    assert f"| Best-of-N | 4.0 | {sum(kept) * len(BON[0]) / 2:.0f} | 50.0 |" in report


def test_an_empty_step_and_a_full_context_end_their_candidates():
    problem = PROBLEMS[0]
    context = policy_context(CharTokenizer(), problem["problem"])
    texts = {"Step 1: ": ["\nStep 2: skipped", "n1 [0.9]\nStep 2: more"]}
    room = len(context + "Step 1: n1 [0.9]\n\nStep 2: ")  # the second prompt has no room left
    policy = ScriptedEngine(lambda prompt, i: texts[prompt[len(context) :]][i], max_model_len=room)
    verifier = GenPRMVerifier(ScriptedEngine(script), mode="direct")
    job = ProblemSearch(problem["problem"], policy, verifier, SamplingParams(max_tokens=64))
    pool = asyncio.run(job.run("beam", n=2, width=2, max_steps=5))
    records = [sample_record(problem, index, final) for index, final in enumerate(pool)]
    # Sample 0 wrote nothing before the next header; sample 1's next prompt does not fit.
    assert [(r["finish"], r["steps"], r["step_rewards"]) for r in records] == [
        ("empty", [], []), ("context", ["Step 1: n1 [0.9]"], [pytest.approx(0.9)]),
    ]  # fmt: skip
    assert [final.value for final in pool] == [0.0, pytest.approx(0.9)]
    assert len(policy.prompts) == 1 and job.policy_tokens == len("\nStep " + "n1 [0.9]\nStep ")


def test_a_rerun_skips_searched_problems_and_cuts_a_torn_line(tmp_path):
    first = run_scripted(tmp_path, ScriptedEngine(script))
    again = ScriptedEngine(script)
    assert run_scripted(tmp_path, again) == first
    assert again.prompts == []  # nothing searched, generated or scored again
    lines = (tmp_path / runner.SEARCH).read_bytes().splitlines(keepends=True)
    (tmp_path / runner.SEARCH).write_bytes(lines[0] + lines[1][:30])  # killed writing it
    torn = next(p for p in PROBLEMS if p["id"] == json.loads(lines[1])["problem_id"])
    third = ScriptedEngine(script)
    assert run_scripted(tmp_path, third) == first
    searched = [p for p in third.prompts if SYSTEM_POLICY in p]
    assert searched and all(torn["problem"] in p for p in searched)  # only it again
    assert len(read_lines(tmp_path / runner.SEARCH)) == 2


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    run_scripted(tmp_path, ScriptedEngine(script))
    with pytest.raises(ResumeError, match=r"beam_width 2 -> 4"):
        runner.start(tmp_path, {**SETTINGS, "beam_width": 4})


def test_the_command_refuses_bad_settings_and_a_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--n", "5", "--beam-width", "2", "--out", str(tmp_path / "o")])
    assert "multiple of the beam width" in capsys.readouterr().err
    code = main(["search", "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "none.jsonl" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real engine


def search_command(server, out: Path) -> list[str]:
    return eval_command(
        "search", server, out, "--input", str(MATH500), "--limit", "1", "--n", "4",
        "--beam-width", "2", "--max-steps", "2", "--mode", "cot", "--budget", "48",
        "--max-step-tokens", "48",
    )  # fmt: skip


@pytest.mark.vllm_server
def test_the_command_on_a_vllm_server_runs_end_to_end_and_resumes(
    vllm_servers, vllm_api_key, tmp_path
):
    command = search_command(vllm_servers[0], tmp_path)
    done = run_eval(command, timeout_s=1800)
    assert done.returncode == 0, done.stderr[-5000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {
        "n", "pass_at_n", "majority", "best_of_n", "weighted_majority", "single_sample",
        "policy_tokens_per_problem", "verifier_tokens_per_problem", "equal_budget",
    }  # fmt: skip
    assert metrics["n"] == [1, 2, 4]
    assert metrics["policy_tokens_per_problem"] > 0 and metrics["verifier_tokens_per_problem"] > 0
    assert set(metrics["equal_budget"]) == {"search", "bon"}
    lines = read_lines(tmp_path / "samples.jsonl")
    assert 1 <= len(lines) <= 4
    for line in lines:
        assert len(line["steps"]) <= 2 and len(line["step_rewards"]) == len(line["steps"])
        assert all(0.0 <= r <= 1.0 for r in line["step_rewards"])
        assert isinstance(line["correct"], bool)
        assert split_policy_steps(line["text"]) == line["steps"]
    assert "report:" in done.stdout
    stored = {
        name: (tmp_path / name).read_bytes()
        for name in (runner.SEARCH, "bon/samples.jsonl", "bon/scores.jsonl")
    }

    again = run_eval(command, timeout_s=600)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "1 problems already searched" in again.stderr
    assert {name: (tmp_path / name).read_bytes() for name in stored} == stored  # no new work
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
