"""``genprm-eval bon``: a scripted run in-process (policy samples and step rewards fixed by the
script, so the metrics are exact), resuming (finished problems and scored ids are skipped),
settings changes refused, ``--samples`` files, the critic's step rewards, and the real command
against a vLLM server on 127.0.0.1 with the embedded model."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.bon import runner
from eval.bon import samples as bon_samples
from eval.cli import main
from genprm.aggregate import AGGREGATIONS
from genprm.format import ANALYZE_END, ANALYZE_PREFIX, OUTPUT_PREFIX, SYSTEM_POLICY
from genprm.runs import ResumeError
from genprm.sandbox import Sandbox
from genprm.testing import ScriptedEngine
from genprm.verifier import GenPRMVerifier
from tests.support.eval_commands import MATH500, eval_command, run_eval
from tests.support.judgements import judgement

SETTINGS = {"verifier": "genprm", "mode": "direct", "n": 4}
N = 4
PROBLEMS = [
    {"id": "p1", "problem": "What is 2 + 3?", "answer": "5"},
    {"id": "p2", "problem": "What is 3 + 4?", "answer": "7"},
]
# Each paragraph ends in its scripted reward [p]; the verifier judges it with p(Yes) = p.
POLICY = {
    "p1": [
        "Add them. [0.9]\n\nSo \\boxed{5}. [0.8]",  # right: last .8 min .8 mean .85 prod .72
        "Guess. [0.95]\n\nSo \\boxed{ 4 }. [0.9]",  # wrong: .9 .9 .925 .855
        "Hmm. [0.3]\n\nSo \\boxed{5}. [0.99]",  # right: .99 .3 .645 .297
        "",  # no paragraphs: wrong, reward 0
    ],
    "p2": [
        "\\boxed{7} [0.2]",  # right: .2 everywhere
        "Think. [0.6]\n\n\\boxed{8} [0.6]",  # wrong: .6 .6 .6 .36
        "Think. [0.5]\n\n\\boxed{7} [0.7]",  # right: .7 .5 .6 .35
        "No answer. [0.99]",  # wrong (no answer): .99 everywhere
    ],
}


def script(prompt: str, index: int):
    if SYSTEM_POLICY in prompt:
        problem = next(p for p in PROBLEMS if p["problem"] in prompt)
        return POLICY[problem["id"]][index]
    assert prompt.endswith(OUTPUT_PREFIX), prompt[-200:]
    user = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)[-1]
    p = float(re.findall(r"\[([0-9.]+)\]", user)[-1])
    return judgement(p)


class ExactGrader:
    """String equality instead of math-verify (the real grader runs in the server test)."""

    async def correct(self, answers, reference):
        return [answer == reference for answer in answers]


def run_scripted(out: Path, engine: ScriptedEngine, problems=PROBLEMS, samples=()) -> list:
    runner.start(out, SETTINGS)
    verifier = GenPRMVerifier(engine, mode="direct")

    def scorer(pending, write, progress):
        return runner.score_genprm(verifier, pending, write, progress)

    params = bon_samples.policy_params(N, 0.7, 64, 0)
    return asyncio.run(
        runner.collect(
            out, problems=problems, samples=samples, n=N, params=params, policy_engine=engine,
            grader=ExactGrader(), scorer=scorer,
        )
    )  # fmt: skip


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_scripted_run_scores_every_step_and_gives_exact_metrics(tmp_path):
    engine = ScriptedEngine(script)
    samples = run_scripted(tmp_path, engine)
    assert [s["id"] for s in samples] == [f"p{i}-{k}" for i in (1, 2) for k in range(N)]
    policy_prompts = [p for p in engine.prompts if SYSTEM_POLICY in p]
    assert len(policy_prompts) == 2  # one request per problem, n = 4
    steps = sum(len(s["steps"]) for s in samples)
    assert len(engine.prompts) == 2 + steps  # direct mode: one request per step
    metrics = runner.finish(tmp_path, samples, SETTINGS, "scripted", subsets=32, seed=0)

    lines = {line["id"]: line for line in read_lines(tmp_path / bon_samples.SAMPLES)}
    assert lines["p1-0"]["step_rewards"] == pytest.approx([0.9, 0.8])
    assert lines["p1-0"]["steps"] == ["Add them. [0.9]", "So \\boxed{5}. [0.8]"]
    assert lines["p1-1"]["final_answer"] == "4" and lines["p1-1"]["correct"] is False
    assert lines["p1-3"]["steps"] == [] and lines["p1-3"]["step_rewards"] == []
    assert lines["p2-3"]["final_answer"] is None and lines["p2-3"]["correct"] is False
    for line in lines.values():
        assert len(line["step_rewards"]) == len(line["steps"])
        assert set(line) >= {"problem_id", "index", "problem", "answer", "text", "tokens"}

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["n"] == [1, 2, 4]
    # n = 1: half of each problem's samples are right.
    assert metrics["single_sample"] == 50.0
    assert metrics["pass_at_n"][0] == metrics["majority"][0] == 50.0
    assert all(metrics["best_of_n"][how][0] == 50.0 for how in AGGREGATIONS)
    # n = 2 (all 6 pairs): a pair misses only as (1, 3), in both problems.
    assert metrics["pass_at_n"][1] == pytest.approx(100 * 5 / 6)
    # majority: ties go to the pair's first sample; no answer never wins: 4 of 6 each.
    assert metrics["majority"][1] == pytest.approx(100 * 4 / 6)
    # best by last reward: p1 right in 4 of 6 pairs, p2 in 2 of 6.
    assert metrics["best_of_n"]["last"][1] == pytest.approx(50.0)
    # n = 4: the full set. Majority: "5" (twice) and "7" (twice) win.
    assert metrics["pass_at_n"][2] == metrics["majority"][2] == 100.0
    # best: p1 by last picks sample 2 (right), by min/mean/product sample 1 (wrong);
    # p2 always picks sample 3 (0.99, no answer: wrong).
    assert {how: v[2] for how, v in metrics["best_of_n"].items()} == {
        "last": 50.0, "min": 0.0, "mean": 0.0, "product": 0.0,
    }  # fmt: skip
    # weighted: p1 "5" beats "4" and p2 "7" beats "8" under every aggregation.
    assert all(metrics["weighted_majority"][how][2] == 100.0 for how in AGGREGATIONS)
    report = (tmp_path / "report.md").read_text()
    assert "| 4 | 100.0 | 100.0 |" in report and "Single-sample baseline" in report
    assert (tmp_path / "bon_curve.png").read_bytes().startswith(b"\x89PNG")


def test_a_rerun_skips_sampled_problems_and_scored_ids(tmp_path):
    run_scripted(tmp_path, ScriptedEngine(script))
    scores = tmp_path / runner.SCORES
    lines = scores.read_bytes().splitlines(keepends=True)
    assert len(lines) == 7  # the empty sample needs no score
    kept = b"".join(lines[:4])
    scores.write_bytes(kept + lines[4][:10])  # killed while writing the fifth
    again = ScriptedEngine(script)
    samples = run_scripted(tmp_path, again)
    assert not [p for p in again.prompts if SYSTEM_POLICY in p]  # nothing regenerated
    rescored = {json.loads(line)["id"] for line in lines[4:]}
    steps = sum(len(s["steps"]) for s in samples if s["id"] in rescored)
    assert len(again.prompts) == steps
    after = scores.read_bytes()
    assert after.startswith(kept)
    ids = [line["id"] for line in read_lines(scores)]
    assert len(ids) == len(set(ids)) == 7
    runner.finish(tmp_path, samples, SETTINGS, "scripted", 32, 0)
    # A torn generation: the second problem loses lines; only it is generated again.
    generated = (tmp_path / bon_samples.SAMPLES).read_bytes().splitlines(keepends=True)
    (tmp_path / bon_samples.SAMPLES).write_bytes(b"".join(generated[:6]) + generated[6][:20])
    third = ScriptedEngine(script)
    run_scripted(tmp_path, third)
    assert [p for p in third.prompts if SYSTEM_POLICY in p] == [
        p for p in third.prompts if PROBLEMS[1]["problem"] in p and SYSTEM_POLICY in p
    ]
    assert len([p for p in third.prompts if SYSTEM_POLICY in p]) == 1
    assert len(read_lines(tmp_path / bon_samples.SAMPLES)) == 8


def test_metrics_per_n_and_the_curve_go_to_wandb(tmp_path, read_wandb_run):
    samples = run_scripted(tmp_path, ScriptedEngine(script))
    metrics = runner.finish(tmp_path, samples, SETTINGS, "scripted", 32, 0)
    args = SimpleNamespace(wandb_project="genprm-tests", out=tmp_path)
    runner._log_to_wandb(args, metrics, SETTINGS)
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    history, summary = read_wandb_run(run_dir)
    assert history["n"] == [1, 2, 4]
    assert history["best_of_n/last"] == pytest.approx(metrics["best_of_n"]["last"])
    assert history["weighted_majority/mean"] == pytest.approx(metrics["weighted_majority"]["mean"])
    assert summary["single_sample"] == 50.0
    assert history["bon_curve/_type"] == ["image-file"]


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    run_scripted(tmp_path, ScriptedEngine(script))
    with pytest.raises(ResumeError, match=r"n 4 -> 8"):
        runner.start(tmp_path, {**SETTINGS, "n": 8})
    runner.start(tmp_path, {**SETTINGS, "subsets": 4})  # only changes the report


def test_adaptive_score_lines_name_the_level_that_decided_each_step(tmp_path):
    def adaptive(prompt: str, index: int):
        t = prompt.count("<|im_start|>user")
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return "Checked.\n" + ANALYZE_END
        user = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)[-1]
        p = float(re.findall(r"\[([0-9.]+)\]", user)[-1])
        if prompt.endswith(ANALYZE_END + OUTPUT_PREFIX):
            p = 0.97  # with analysis, every step is right
        return judgement(p)

    samples = [{"id": "a-0", "problem": "What is 2 + 3?", "steps": ["Add. [0.95]", "5. [0.5]"]}]
    lines = []
    with Sandbox(workers=1) as sandbox:
        verifier = GenPRMVerifier(ScriptedEngine(adaptive), sandbox, mode="adaptive")
        asyncio.run(runner.score_genprm(verifier, samples, lines.append))
    [line] = [json.loads(line) for line in lines]
    assert line["levels"] == ["direct", "cot"]  # the second step is ambiguous judged directly
    assert line["step_rewards"] == pytest.approx([0.95, 0.97])
    assert runner.merge(samples, {line["id"]: line})[0]["step_rewards"] == line["step_rewards"]


def test_samples_from_a_file_are_scored_and_reported(tmp_path):
    path = tmp_path / "given.jsonl"
    rows = [
        {"id": "a-0", "problem_id": "a", "problem": "What is 2 + 3?", "answer": "5",
         "text": "Add. [0.9]\n\n\\boxed{5} [0.9]", "correct": True},
        {"id": "a-1", "problem_id": "a", "problem": "What is 2 + 3?", "answer": "5",
         "text": "Add. [0.9]\n\n\\boxed{6} [0.1]"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = bon_samples.read_samples(path)
    assert [s["index"] for s in read] == [0, 1]
    assert read[1]["steps"] == ["Add. [0.9]", "\\boxed{6} [0.1]"]
    assert read[1]["final_answer"] == "6" and read[1]["correct"] is None
    out = tmp_path / "out"
    samples = run_scripted(out, ScriptedEngine(script), problems=(), samples=read)
    assert [s["correct"] for s in samples] == [True, False]
    metrics = runner.finish(out, samples, SETTINGS, "given", 32, 0)
    assert metrics["n"] == [1, 2]
    assert metrics["best_of_n"]["last"] == [50.0, 100.0]
    assert bon_samples.read_samples(path, n=1)[0]["id"] == "a-0"
    assert len(bon_samples.read_samples(path, n=1)) == 1
    path.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:2"):
        bon_samples.read_samples(path)


def test_the_critic_baseline_gives_rewards_before_its_first_wrong_paragraph(tmp_path):
    def critic(prompt: str, index: int) -> str:
        return "The second paragraph is wrong: \\boxed{1}"

    samples = [
        bon_samples.make_sample(PROBLEMS[0], 0, "A.\n\nB.\n\nC. \\boxed{5}"),
        bon_samples.make_sample(PROBLEMS[0], 1, "Only one."),
    ]
    written = []
    asyncio.run(runner.score_critic(ScriptedEngine(critic), samples, written.append))
    rewards = {json.loads(line)["id"]: json.loads(line)["step_rewards"] for line in written}
    assert rewards == {"p1-0": [1.0, 0.0, 0.0], "p1-1": [0.5]}  # index 1 of 1 step: invalid


def test_the_bon_command_refuses_a_missing_input(tmp_path, capsys):
    code = main(["bon", "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "none.jsonl" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real engine


def bon_command(server, out: Path) -> list[str]:
    return eval_command(
        "bon", server, out, "--input", str(MATH500), "--limit", "2", "--n", "4",
        "--budget", "24", "--mode", "direct", "--max-tokens", "64",
    )  # fmt: skip


@pytest.mark.vllm_server
def test_the_command_on_a_vllm_server_runs_end_to_end_and_resumes(
    vllm_servers, vllm_api_key, tmp_path
):
    command = bon_command(vllm_servers[0], tmp_path)
    done = run_eval(command, timeout_s=600)
    assert done.returncode == 0, done.stderr[-5000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {
        "n", "pass_at_n", "majority", "best_of_n", "weighted_majority", "single_sample",
    }  # fmt: skip
    assert metrics["n"] == [1, 2, 4]
    assert set(metrics["best_of_n"]) == set(AGGREGATIONS)
    for values in [metrics["pass_at_n"], metrics["majority"], *metrics["best_of_n"].values()]:
        assert len(values) == 3 and all(0.0 <= v <= 100.0 for v in values)
    lines = read_lines(tmp_path / bon_samples.SAMPLES)
    assert len(lines) == 8
    for line in lines:
        assert len(line["step_rewards"]) == len(line["steps"])
        assert all(0.0 <= r <= 1.0 for r in line["step_rewards"])
        assert isinstance(line["correct"], bool)
    assert (tmp_path / "report.md").exists() and (tmp_path / "bon_curve.png").exists()
    assert "report:" in done.stdout
    before = (tmp_path / runner.SCORES).read_bytes()

    again = run_eval(command, timeout_s=600)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "2 problems already sampled" in again.stderr
    assert (tmp_path / runner.SCORES).read_bytes() == before  # nothing scored again
    assert read_lines(tmp_path / bon_samples.SAMPLES) == lines  # nothing regenerated
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
