"""The code loop's sandbox sessions, through its two callers (spec §3 and §4): one live
namespace per verification path across its steps, as upstream's ``CodeExecutor`` kept one per
solution, and one per rationale; scripted engines, real sandbox (root: session processes are
found by their uid).

Upstream's behaviour on three steps: a step whose block timed out does not make the later ones
time out, a random value keeps its value, an expensive block is not paid for again; a state
continued twice (the search) hands its live session to one continuation and a rebuilt one to
the other; the samples of a shared history; every session closed when scoring ends.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from data_synthesis.rationale import RationaleStage
from genprm.format import (
    ANALYZE_END,
    ANALYZE_PREFIX,
    CODE_TIMEOUT,
    FINAL_CONCLUSION,
    OUTPUT_END,
    OUTPUT_PREFIX,
    RATIONALE_PREFIX,
    VERIFY_PREFIX,
)
from genprm.testing import ScriptedEngine
from genprm.verifier import GenPRMVerifier
from tests.support.processes import session_processes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.sandbox(timeout=2.0)]

PROBLEM = "List the primes below 10, then count them."
STEPS = ["They are 2, 3, 5 and 7.", "So there are four.", "The answer is 4.", "Done."]
PRIMES = "primes = [p for p in range(2, 10) if all(p % d for d in range(2, p))]"
# A [Code Output] block and what it shows.
OUTPUT = re.compile(r"\[Code Output\]\n\n`{3,}\n(.*?)\n`{3,}\n", re.DOTALL)


def step_of(prompt: str) -> int:
    return int(re.findall(r"Let's analyze the Paragraph (\d+)", prompt)[-1])


def scripted(code_of) -> ScriptedEngine:
    """A verifier that writes ``code_of(step, path)`` as its one block of each step and then
    judges Yes; the analysis names the path (the sample index of the analysis request)."""

    def answer(prompt: str, index: int) -> str:
        t = step_of(prompt)
        if prompt.endswith(ANALYZE_PREFIX.format(t=t)):
            return f"Path {index} checks step {t}.\n{ANALYZE_END}"
        path = int(re.findall(r"Path (\d+) checks step", prompt)[-1])
        if prompt.endswith(VERIFY_PREFIX):
            return code_of(t, path) + "\n```\n"
        if prompt.endswith(OUTPUT_PREFIX):  # the fallback
            return "{Yes}$\n" + OUTPUT_END
        return "Checked.\n</verify>\n" + OUTPUT_PREFIX + "{Yes}$\n" + OUTPUT_END

    return ScriptedEngine(answer)


def code_just_ran(prompt: str) -> bool:
    """Whether a verifier prompt ends in the output of its turn's block (the judgement's)."""
    last = list(OUTPUT.finditer(prompt))
    return bool(last) and last[-1].end() == len(prompt)


def printed(turn: str) -> list[str]:
    """What the code of one turn printed, block by block."""
    return OUTPUT.findall(turn)


def test_a_step_that_timed_out_does_not_make_the_next_steps_time_out(sandbox):
    code = {1: PRIMES + "\nprint(primes)", 2: "while True:\n    pass", 3: "print(primes)"}
    engine = scripted(lambda t, path: code[t])
    result = GenPRMVerifier(engine, sandbox).score(PROBLEM, STEPS[:3])
    assert [printed(turn) for turn in result.turns] == [
        ["[2, 3, 5, 7]"],
        [CODE_TIMEOUT],
        ["[2, 3, 5, 7]"],  # upstream's step 3, after its step 2 timed out
    ]


def test_a_random_value_drawn_in_step_1_keeps_its_value(sandbox):
    code = {1: "import random\nr = random.random()\nprint(r)", 2: "print(r)", 3: "print(r)"}
    result = GenPRMVerifier(scripted(lambda t, path: code[t]), sandbox).score(PROBLEM, STEPS[:3])
    [first], [second], [third] = (printed(turn) for turn in result.turns)
    assert first == second == third and float(first) < 1


def test_an_expensive_block_is_paid_for_once(sandbox):
    """Step 1 sleeps 1.5 s; the three steps after it only read its result: the four steps take
    far less than the 6 s a replay of step 1 in every later step would."""
    code = {1: "import time\ntime.sleep(1.5)\nready = 40\nprint(ready)"}
    engine = scripted(lambda t, path: code.get(t, f"print(ready + {t})"))
    started = time.monotonic()
    result = GenPRMVerifier(engine, sandbox).score(PROBLEM, STEPS)
    elapsed = time.monotonic() - started
    assert [printed(turn) for turn in result.turns] == [["40"], ["42"], ["43"], ["44"]]
    assert elapsed < 2 * 1.5, elapsed


def test_a_state_continued_twice_gives_its_live_session_to_one_continuation(sandbox):
    """The search continues one state into several children: the first takes the path's
    live session (the same random value), the other gets one rebuilt from step 1's block (its
    names, the value drawn again); neither sees the other's names."""
    code = {1: "import random\nr = random.random()\nprint(r)", 2: "print(r)\nmine = 1"}
    engine = scripted(lambda t, path: code[t])
    verifier = GenPRMVerifier(engine, sandbox)

    async def search():
        _, state = await verifier.ascore_next(PROBLEM, STEPS[:1], verifier.start())
        _, taken = await verifier.ascore_next(PROBLEM, STEPS[:2], state)
        _, rebuilt = await verifier.ascore_next(PROBLEM, [STEPS[0], "So there are 5."], state)
        for done in (state, taken, rebuilt):
            await done.aclose()
        return state.turns, taken.turns, rebuilt.turns

    state, taken, rebuilt = asyncio.run(search())
    [drawn] = printed(state[0])
    assert printed(taken[1]) == [drawn]
    [again] = printed(rebuilt[1])
    assert again != drawn and float(again) < 1
    assert wait_for(lambda: session_processes(sandbox) == [])


def test_the_samples_of_a_shared_history_start_from_path_0(sandbox):
    engine = scripted(lambda t, path: f"v = {path}\nprint(v)" if t == 1 else "print(v)")
    verifier = GenPRMVerifier(engine, sandbox, maj=3, history="shared")
    verifier.score(PROBLEM, STEPS[:3])
    for t in (2, 3):
        judged = [p for p in engine.prompts if step_of(p) == t and code_just_ran(p)]
        assert [printed(p)[-1] for p in judged] == ["0", "0", "0"]  # path 0's v, all three
    assert session_processes(sandbox) == []  # the samples' sessions were closed each step


def test_independent_paths_keep_their_own_namespace(sandbox):
    engine = scripted(lambda t, path: f"v = {path}\nprint(v)" if t == 1 else "print(v)")
    verifier = GenPRMVerifier(engine, sandbox, maj=3, history="independent")
    verifier.score(PROBLEM, STEPS[:2])
    judged = [p for p in engine.prompts if step_of(p) == 2 and code_just_ran(p)]
    assert sorted(printed(p)[-1] for p in judged) == ["0", "1", "2"]


def test_scoring_closes_every_session_it_opened(sandbox):
    engine = scripted(lambda t, path: f"x{t} = {t}\nprint(x{t})")
    verifier = GenPRMVerifier(engine, sandbox, maj=2, history="independent", concurrency=3)
    results = verifier.score_many([(PROBLEM, STEPS[:k]) for k in (1, 2, 3, 4)])
    assert all(result.error is None for result in results)
    assert session_processes(sandbox) == []
    # A solution whose prompt no longer fits: its sessions are closed too.
    short = GenPRMVerifier(scripted(lambda t, path: "print(1)"), sandbox)
    short.engine.max_model_len = 900
    [failed] = short.score_many([(PROBLEM, [STEPS[0], "x" * 900])], stop_at_first_error=False)
    assert failed.error is not None and "step 2" in failed.error
    assert session_processes(sandbox) == []


def test_a_rationale_runs_its_blocks_in_one_session_and_closes_it(sandbox):
    def answer(prompt: str, index: int) -> str:
        if prompt.endswith(FINAL_CONCLUSION):
            return "{-1"
        rounds = len(OUTPUT.findall(prompt))
        if prompt.endswith(RATIONALE_PREFIX):
            code = "import random\nr = random.random()\nprint(r)"
            return f"Fine.\n</analyze>\n<verify>\n```python\n{code}\n```\n"
        if rounds == 1:
            return "Again.\n```python\nprint(r)\n```\n"
        return "Same.\n</verify>\n</think>"

    record = {"id": "s1", "problem": PROBLEM, "steps": STEPS[:1]}
    result = asyncio.run(RationaleStage(ScriptedEngine(answer), sandbox).process(record))
    [output] = result.records
    drawn, again = OUTPUT.findall(output["rationale_text"])
    assert drawn == again and output["code_rounds"] == 2
    assert session_processes(sandbox) == []
