"""data_synthesis.rollout against scripted rollouts with known answers: adaptive K per band,
exact MC values, the last step from the solution's own answer, the early stop (no requests after
a step with MC = 0), every step without it, request splitting and seeds, MC(s_0) computed once
per problem across concurrent solutions and read back from the cache file."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict

import pytest

from data_synthesis.rollout import RolloutSettings, RolloutStage
from data_synthesis.stage import StageError
from genprm.format import SYSTEM_POLICY
from genprm.testing import ScriptedEngine

pytestmark = pytest.mark.sandbox(workers=1)

RIGHT, WRONG, NONE = "so \\boxed{10}", "so \\boxed{7}.", "no idea"
STEPS = ["Step 1: a", "Step 2: b", "Step 3: c", "Step 4: \\boxed{10}"]
SMALL_K = dict(initial_k=10, k_hard=8, k_medium=6, k_easy=4)


def context(problem: str) -> str:
    return (
        f"<|im_start|>system\n{SYSTEM_POLICY}<|im_end|>\n"
        f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
    )


def prefix(steps: list[str], i: int) -> str:
    """The assistant text that step i's rollouts continue."""
    return "\n\n".join(steps[: i + 1]) + f"\n\nStep {i + 2}: "


def answers(right: int, total: int) -> list[str]:
    """``right`` correct answers, then wrong ones and answerless ones, ``total`` in all."""
    wrong = total - right
    return [RIGHT] * right + [WRONG] * (wrong - wrong // 2) + [NONE] * (wrong // 2)


class Policy(ScriptedEngine):
    """Rollouts by problem and assistant prefix: the j-th rollout ever asked after a prefix is
    ``script[(problem, prefix)][j]`` (so split requests continue where the last one stopped).
    Records every request's params and assistant prefix."""

    def __init__(self, script: dict[tuple[str, str], list[str]]):
        super().__init__(self._answer)
        self.table, self.asked, self.params = script, Counter(), []

    def _complete(self, request):
        self.params.append(request.params)
        return super()._complete(request)

    def _answer(self, prompt: str, index: int) -> str:
        head, assistant = prompt.split("<|im_start|>assistant\n")
        key = (head.split("<|im_start|>user\n")[1].removesuffix("<|im_end|>\n"), assistant)
        self.asked[key] += 1
        return self.table[key][self.asked[key] - 1]

    def prefixes(self) -> list[str]:
        return [prompt.split("<|im_start|>assistant\n")[1] for prompt in self.prompts]


def record(steps=STEPS, correct=True, problem="Add 4 and 6.", problem_id="p", k=0) -> dict:
    return {
        "id": f"{problem_id}-{k}",
        "problem_id": problem_id,
        "problem": problem,
        "answer": "10",
        "steps": steps,
        "final_answer": "10",
        "correct": correct,
        "solve_tokens": 5,
    }


def run(stage: RolloutStage, *records: dict):
    async def all_at_once():
        return await asyncio.gather(*(stage.process(dict(r)) for r in records))

    return asyncio.run(all_at_once())


def stage_for(engine, sandbox, cache_path=None, **settings) -> RolloutStage:
    return RolloutStage(engine, sandbox, RolloutSettings(**{**SMALL_K, **settings}), cache_path)


def test_mc_values_exact_and_last_step_from_own_answer(sandbox):
    p = "Add 4 and 6."
    script = {
        (p, "Step 1: "): answers(5, 10),
        (p, prefix(STEPS, 0)): answers(4, 6),
        (p, prefix(STEPS, 1)): answers(1, 6),
        (p, prefix(STEPS, 2)): answers(6, 6),
    }
    engine = Policy(script)
    [result] = run(stage_for(engine, sandbox, seed=11), record(correct=False))
    [out] = result.records
    assert out["mc"] == [4 / 6, 1 / 6, 1.0, 0.0]
    assert (out["mc_initial"], out["k"], out["rollouts"]) == (0.5, 6, [6, 6, 6, 0])
    step_tokens = sum(len(text) for key in list(script)[1:] for text in script[key])
    assert out["rollout_tokens"] == step_tokens
    assert {key: out[key] for key in record()} == record(correct=False)
    assert result.stats == {
        "solutions": 1,
        "steps": 4,
        "rollouts": 10 + 18,
        "tokens": step_tokens + sum(map(len, answers(5, 10))),
        "requests": 4,
        "initial_pass_rates": 1,
        "early_stopped": 0,
    }
    assert engine.prefixes() == ["Step 1: "] + [prefix(STEPS, i) for i in range(3)]
    assert engine.prompts[0] == context(p) + "Step 1: "
    assert [(q.n, q.seed, q.temperature) for q in engine.params] == [
        (10, 11, 0.7),
        (6, 11, 0.7),
        (6, 11, 0.7),
        (6, 11, 0.7),
    ]


@pytest.mark.parametrize(("right", "k"), [(0, 8), (1, 6), (5, 6), (8, 6), (9, 4), (10, 4)], ids=str)
def test_k_by_difficulty(sandbox, right, k):
    p = "Add 4 and 6."
    script = {(p, "Step 1: "): answers(right, 10)}
    script |= {(p, prefix(STEPS[:2], 0)): answers(1, k)}
    [result] = run(stage_for(Policy(script), sandbox), record(STEPS[:2]))
    [out] = result.records
    assert (out["mc_initial"], out["k"], out["mc"]) == (right / 10, k, [1 / k, 1.0])


def test_early_stop_at_mc_zero(sandbox):
    p = "Add 4 and 6."
    steps = STEPS + ["Step 5: d"]
    script = {
        (p, "Step 1: "): answers(5, 10),
        (p, prefix(steps, 0)): answers(3, 6),
        (p, prefix(steps, 1)): answers(0, 6),
        (p, prefix(steps, 2)): answers(6, 6),
        (p, prefix(steps, 3)): answers(6, 6),
    }
    engine = Policy(script)
    [result] = run(stage_for(engine, sandbox), record(steps))
    [out] = result.records
    assert out["mc"] == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert out["rollouts"] == [6, 6, 0, 0, 0]
    assert engine.prefixes() == ["Step 1: ", prefix(steps, 0), prefix(steps, 1)]
    assert result.stats["early_stopped"] == 2 and result.stats["rollouts"] == 10 + 12

    engine = Policy(script)
    [result] = run(stage_for(engine, sandbox, early_stop=False), record(steps))
    [out] = result.records
    assert out["mc"] == [0.5, 0.0, 1.0, 1.0, 1.0]
    assert out["rollouts"] == [6, 6, 6, 6, 0]
    assert engine.prefixes() == ["Step 1: "] + [prefix(steps, i) for i in range(4)]
    assert result.stats["early_stopped"] == 0


def test_rollouts_split_into_requests_with_successive_seeds(sandbox):
    p = "Add 4 and 6."
    script = {(p, "Step 1: "): answers(0, 10), (p, prefix(STEPS[:2], 0)): answers(3, 8)}
    engine = Policy(script)
    stage = stage_for(engine, sandbox, max_n_per_request=3, seed=100)
    [result] = run(stage, record(STEPS[:2]))
    assert result.records[0]["mc"] == [3 / 8, 1.0]
    assert [(q.n, q.seed) for q in engine.params] == [
        (3, 100), (3, 101), (3, 102), (1, 103), (3, 100), (3, 101), (2, 102),
    ]  # fmt: skip
    assert result.stats["requests"] == 7


def test_mc_initial_once_per_problem_and_read_back_from_the_cache(sandbox, tmp_path):
    p, q = "Add 4 and 6.", "Add 5 and 5."
    two = STEPS[:2]
    script = {
        (p, "Step 1: "): answers(5, 10),
        (q, "Step 1: "): answers(10, 10),
        (p, prefix(two, 0)): answers(3, 6) * 3,
        (q, prefix(two, 0)): answers(2, 4),
    }
    cache = tmp_path / "mc_initial.jsonl"
    engine = Policy(script)
    stage = stage_for(engine, sandbox, cache_path=cache)
    solutions = [record(two, problem=p, k=k) for k in range(3)] + [
        record(two, problem=q, problem_id="q")
    ]
    results = run(stage, *solutions)
    assert engine.prefixes().count("Step 1: ") == 2
    assert [r.records[0]["mc_initial"] for r in results] == [0.5, 0.5, 0.5, 1.0]
    assert [r.records[0]["mc"] for r in results] == [[0.5, 1.0]] * 3 + [[0.5, 1.0]]
    assert sum(r.stats["initial_pass_rates"] for r in results) == 2
    assert sum(r.stats["rollouts"] for r in results) == 20 + 3 * 6 + 4
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted((e["problem_id"], e["mc_initial"], e["rollouts"]) for e in lines) == [
        ("p", 0.5, 10),
        ("q", 1.0, 10),
    ]
    assert {e["problem_id"]: e["tokens"] for e in lines}["p"] == sum(map(len, answers(5, 10)))

    again = Policy({(p, prefix(two, 0)): answers(6, 6)})
    [result] = run(stage_for(again, sandbox, cache_path=cache), record(two, problem=p, k=7))
    assert "Step 1: " not in again.prefixes()
    assert result.records[0]["mc_initial"] == 0.5 and result.records[0]["mc"] == [1.0, 1.0]
    assert result.stats["initial_pass_rates"] == 0  # another solution's: counted there
    # the solution that computed it, redone (its first result was lost), counts it again
    redo = Policy({(p, prefix(two, 0)): answers(6, 6)})
    [result] = run(stage_for(redo, sandbox, cache_path=cache), record(two, problem=p, k=0))
    assert "Step 1: " not in redo.prefixes()
    assert result.stats["initial_pass_rates"] == 1 and result.stats["rollouts"] == 10 + 6


def test_a_torn_last_cache_line_is_cut_off_and_recomputed(sandbox, tmp_path):
    p = "Add 4 and 6."
    cache = tmp_path / "mc_initial.jsonl"
    whole = json.dumps({"problem_id": "other", "mc_initial": 0.25, "rollouts": 10, "tokens": 9})
    cache.write_text(whole + '\n{"problem_id": "p", "mc_ini')
    engine = Policy({(p, "Step 1: "): answers(1, 10), (p, prefix(STEPS[:2], 0)): answers(1, 8)})
    [result] = run(stage_for(engine, sandbox, cache_path=cache), record(STEPS[:2]))
    assert result.records[0]["mc_initial"] == 0.1 and result.records[0]["k"] == 6
    lines = cache.read_text().splitlines()
    assert lines[0] == whole and json.loads(lines[1])["problem_id"] == "p" and len(lines) == 2


def test_a_cache_from_another_initial_k_is_refused(sandbox, tmp_path):
    cache = tmp_path / "mc_initial.jsonl"
    cache.write_text(json.dumps({"problem_id": "p", "mc_initial": 0.5, "rollouts": 32}) + "\n")
    with pytest.raises(ValueError, match="32 rollouts, but initial_k is 10"):
        stage_for(Policy({}), sandbox, cache_path=cache)
    cache.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=":1: not an MC"):
        stage_for(Policy({}), sandbox, cache_path=cache)


def test_settings_and_bad_records(sandbox):
    stage = stage_for(Policy({}), sandbox)
    assert stage.settings() == asdict(RolloutSettings(**SMALL_K))
    for bad, message in (
        ({"steps": []}, "non-empty list"),
        ({"steps": "Step 1: a"}, "non-empty list"),
        ({"correct": 1}, "true or false"),
        ({"answer": None}, "'answer' must be a string"),
    ):
        with pytest.raises(StageError, match=message):
            run(stage, record() | bad)
    with pytest.raises(ValueError):
        RolloutSettings(hard_below=0.5, easy_from=0.4)
