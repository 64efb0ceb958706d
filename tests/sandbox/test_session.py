"""genprm.sandbox sessions (``Sandbox.session()``), as root: one live namespace per path, as
upstream's in-process executor kept, with the isolation and limits of a snippet.

Upstream equivalence (a later block sees what earlier ones defined, random values keep their
values, a time-out does not come back, a block costs its own time only), per-block costs that do
not grow, two sessions that cannot see each other, the hostile snippets of test_sandbox.py and
test_redteam.py run inside a session (nothing of a block outlives it but the namespace),
crashes, eviction and rebuild, and closing (no session process, no cgroup left).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import statistics
import threading
import time

import pytest

from genprm.format import CODE_TIMEOUT
from genprm.sandbox import Sandbox, SandboxError, cgroups
from genprm.sandbox.snippet import SESSION_NAME
from tests.sandbox.test_redteam import FORKED_TOUCHERS, HUGE, PIPE_BUFFERS, SURROGATES
from tests.support.hostile import (
    FORK_BOMB,
    HUGE_OUTPUTS,
    INFINITE_LOOP,
    LONG_SLEEP,
    MEMORY_BOMBS,
    SETSID_ESCAPE,
    SIGTERM_IGNORED,
    STUBBORN_FORK_BOMB,
)
from tests.support.processes import (
    alive,
    live_pids_of,
    process_name,
    session_processes,
    snippet_uids,
    wait_for,
)

TIMEOUT = 2.0
pytestmark = [pytest.mark.root, pytest.mark.sandbox(timeout=TIMEOUT)]
PRIMES = "primes = [p for p in range(2, 10) if all(p % d for d in range(2, p))]"


def limited(memory_mb: int) -> Sandbox:
    return Sandbox(workers=1, memory_mb=memory_mb, timeout=TIMEOUT)


def one_new_session(sandbox: Sandbox, before: list[int]) -> int:
    """The pid of the one session process that is not among ``before``."""
    [pid] = set(session_processes(sandbox)) - set(before)
    return pid


def others(sandbox: Sandbox) -> list[int]:
    """Live processes under the snippet uids that are not a session waiting for its block."""
    return [p for p in live_pids_of(snippet_uids(sandbox)) if process_name(p) != SESSION_NAME]


def upstream(blocks: list[str]) -> list[str]:
    """What upstream's executor printed for each block: one namespace, exec in-process."""
    namespace: dict = {}
    printed = []
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(block, namespace)  # noqa: S102 - the reference behaviour
        printed.append(out.getvalue())
    return printed


# ----------------------------------------------------------------------------- upstream's semantics


def test_later_blocks_see_earlier_names_as_upstream_did(sandbox):
    blocks = [
        "import sympy\nx = sympy.Symbol('x')\ntotal = 2 + 3\nprint(total)",
        "def double(v):\n    return 2 * v\nprint(double(total))",
        "print(sympy.factor(x**2 - total + 1), double(21))",
    ]
    with sandbox.session() as session:
        printed = [session.run(block).stdout for block in blocks]
    assert printed == upstream(blocks)


def test_a_random_value_keeps_its_value(sandbox):
    with sandbox.session() as session:
        drawn = session.run("import random\nr = random.random()\nprint(r)").stdout
        again = session.run("print(r)").stdout
        fresh = session.run("print(random.random())").stdout
    assert again == drawn and fresh != drawn  # the generator's state went on, too


def test_a_block_that_timed_out_does_not_come_back(sandbox):
    """Upstream: step 2 times out, step 3 still prints the primes of step 1."""
    with sandbox.session() as session:
        first = session.run(PRIMES + "\nruns = []")
        stuck = session.run("runs.append('stuck')\n" + INFINITE_LOOP)
        third = session.run("print(primes, runs)")
        fourth = session.run("print(len(runs))")
    assert first.status == "ok"
    assert (stuck.status, stuck.feedback) == ("timeout", CODE_TIMEOUT)
    # What the stuck block did before the deadline stays, as with upstream's signal.alarm.
    assert (third.status, third.stdout) == ("ok", "[2, 3, 5, 7] ['stuck']\n")
    assert fourth.stdout == "1\n"  # it ran once
    assert session.succeeded == (PRIMES + "\nruns = []", "print(primes, runs)", "print(len(runs))")


def test_an_expensive_block_is_not_repeated(sandbox):
    with sandbox.session() as session:
        slow = session.run("import time\ntime.sleep(1.5)\nready = 41")
        later = [session.run("print(ready + 1)") for _ in range(3)]
    assert all(result.stdout == "42\n" for result in later)
    assert max(result.duration_s for result in later) < slow.duration_s / 5


def test_block_cost_does_not_grow_with_the_blocks_before(sandbox):
    """20 blocks of the same work: the last 5 take about what the first 5 took (a replay of the
    earlier blocks would make the 20th cost 20 of them)."""
    with sandbox.session() as session:
        walls = []
        for k in range(20):
            started = time.perf_counter()
            result = session.run(f"import time\ntime.sleep(0.05)\nv{k} = {k}\nprint(v{k})")
            walls.append(time.perf_counter() - started)
            assert result.stdout == f"{k}\n", result
    first, last = statistics.mean(walls[:5]), statistics.mean(walls[-5:])
    assert last < 2 * first, walls


def test_two_sessions_do_not_see_each_others_names(sandbox):
    results: dict[str, list] = {}

    def path(name: str) -> None:
        with sandbox.session() as session:
            results[name] = [
                session.run(f"secret = {name!r}"),
                session.run("import time\ntime.sleep(0.2)\nprint(secret)"),
                session.run("print(sorted(k for k in globals() if not k.startswith('__')))"),
            ]

    threads = [threading.Thread(target=path, args=(name,)) for name in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for name in ("alpha", "beta"):
        _, seen, names = results[name]
        assert seen.stdout == f"{name}\n"
        assert names.stdout == "['secret', 'time']\n"


def test_arun_and_async_with(sandbox):
    async def main():
        async with sandbox.session() as session:
            await session.arun("n = 6")
            return [(await session.arun(f"print(n * {k})")).stdout for k in range(3)]

    assert asyncio.run(main()) == ["0\n", "6\n", "12\n"]


def test_a_session_starts_from_its_prelude(sandbox):
    with sandbox.session(["x = 40", "1 / 0", "y = x + 1"]) as session:
        result = session.run("print(y + 1)")
    assert (result.status, result.stdout) == ("ok", "42\n")


# ----------------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    "crash, status, kept",
    [
        ("import os\nos._exit(0)", "ok", False),  # the process ended: nothing to keep
        ("import os\nos._exit(3)", "error", False),
        ("import ctypes\nctypes.string_at(0)", "killed", False),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "ok", True),  # init: ignored
        (MEMORY_BOMBS["growing-list"], "memory", False),
    ],
    ids=["exit-0", "exit-3", "segfault", "self-kill", "memory"],
)
def test_a_crash_loses_only_its_own_block(sandbox, crash, status, kept):
    with sandbox.session() as session:
        session.run("x = 41")
        crashed = session.run(crash, timeout=30)
        after = session.run("print(x + 1)")
    assert crashed.status == status, crashed
    assert (after.status, after.stdout) == ("ok", "42\n"), after
    assert (crash in session.succeeded) is kept


def test_a_block_that_ignores_the_interrupt_is_killed_and_the_session_rebuilt(sandbox):
    stubborn = (
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            pass\n"
        "    except BaseException:\n"
        "        pass\n"
    )
    before = session_processes(sandbox)
    with sandbox.session() as session:
        session.run("import random\nr = random.random()")
        first = one_new_session(sandbox, before)
        result = session.run(stubborn)
        after = session.run("print(r > 0)")
        assert one_new_session(sandbox, before) != first  # a new process replayed the first block
    assert result.status == "timeout" and TIMEOUT < result.duration_s < 10 * TIMEOUT
    assert (after.status, after.stdout) == ("ok", "True\n")
    assert stubborn not in session.succeeded


# ----------------------------------------------------------------------------- hostile blocks

# name -> (code, the statuses it may end with, its time limit: a generous one where the status
# must come from another limit than the clock)
HOSTILE = {
    "infinite-loop": (INFINITE_LOOP, ("timeout",), TIMEOUT),
    "long-sleep": (LONG_SLEEP, ("timeout",), TIMEOUT),
    "sigterm-ignored": (SIGTERM_IGNORED, ("timeout",), TIMEOUT),
    "fork-bomb": (FORK_BOMB, ("error", "timeout"), TIMEOUT),
    "stubborn-fork-bomb": (STUBBORN_FORK_BOMB, ("timeout",), TIMEOUT),
    "setsid-escape": (SETSID_ESCAPE, ("ok",), TIMEOUT),
    **{name: (code, ("memory",), 30) for name, code in MEMORY_BOMBS.items()},
    **{name: (code, ("output_limit",), 30) for name, code in HUGE_OUTPUTS.items()},
    **{name: (code, ("error",), 20) for name, code in HUGE.items()},
    **{f"surrogate-{n}": (code, ("ok", "error"), TIMEOUT) for n, code in SURROGATES.items()},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_blocks_in_a_session_are_contained(sandbox, case):
    """Each hostile block between two ordinary ones: its own result, nothing of it left
    running when the result returns (under the snippet uids, only session processes waiting
    for their next block), the same workers, and the next block still sees the first's names."""
    code, statuses, timeout = HOSTILE[case]
    workers = sandbox.worker_pids()
    with sandbox.session() as session:
        session.run("x = 41")
        result = session.run(code, timeout=timeout)
        left = others(sandbox)
        after = session.run("print(x + 1)")
    assert result.status in statuses, result
    result.feedback.encode("utf-8")  # valid UTF-8, as for a snippet
    assert len(result.feedback) <= 20_000
    assert left == [], left
    assert (after.status, after.stdout) == ("ok", "42\n"), after
    assert sandbox.worker_pids() == workers


@pytest.mark.parametrize(
    "code, limit",
    [(FORKED_TOUCHERS, 256), (PIPE_BUFFERS, 48)],  # as test_redteam.py runs them
    ids=["forked-touchers", "pipe-buffers"],
)
def test_a_session_tree_is_held_to_its_memory_limit(code, limit):
    with limited(limit) as sandbox, sandbox.session() as session:
        session.run("x = 41")
        result = session.run(code, timeout=20)
        after = session.run("print(x + 1)")
    assert result.status == "memory", result
    assert after.stdout == "42\n"


def test_threads_a_block_left_do_not_run_between_blocks(sandbox):
    spin = (
        "import threading\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
    )
    before = session_processes(sandbox)
    with sandbox.session() as session:
        session.run(spin)
        pid = one_new_session(sandbox, before)
        used = cpu_seconds(pid)
        time.sleep(1.0)
        idle = cpu_seconds(pid) - used
        result = session.run("import threading\nprint(threading.active_count())")
    assert idle < 0.2, idle  # paused: a running spinner would have taken about a second
    assert result.stdout == "2\n"  # still there for the next block, as in upstream's process


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_session_sees_only_its_own_processes_and_files(sandbox):
    with sandbox.session() as first, sandbox.session() as second:
        first.run("open('/tmp/mine', 'w').write('first')")
        mine = first.run("print(open('/tmp/mine').read())")
        theirs = second.run("import os\nprint(os.path.exists('/tmp/mine'), os.getpid())")
    assert mine.stdout == "first\n"  # its files last as long as it does
    assert theirs.stdout == "False 1\n"  # the init of a PID namespace of its own


# ----------------------------------------------------------------------------- many sessions


def test_past_the_limit_the_least_recent_session_is_ended_and_rebuilt():
    with Sandbox(workers=1, timeout=TIMEOUT, sessions=2) as sandbox:
        sessions = [sandbox.session() for _ in range(3)]
        for index, session in enumerate(sessions):
            session.run(f"v = {index}")
            assert len(session_processes(sandbox)) <= 2
        seen = [session.run("print(v)").stdout for session in sessions]
        assert seen == ["0\n", "1\n", "2\n"]
        assert len(session_processes(sandbox)) == 2
        for session in sessions:
            session.close()
        assert session_processes(sandbox) == []


def test_a_session_whose_worker_died_is_rebuilt():
    with Sandbox(workers=1, timeout=TIMEOUT) as sandbox:
        with sandbox.session() as session:
            session.run("x = 41")
            [old] = sandbox.worker_pids()
            os.kill(old, 9)
            assert wait_for(lambda: not alive(old))
            lost = session.run("print(x + 1)")
            again = session.run("print(x + 1)")
        assert lost.status in ("killed", "ok"), lost
        assert again.stdout == "42\n"
        assert sandbox.worker_pids() != [old]


def test_without_live_sessions_each_block_replays_the_succeeded_ones():
    with Sandbox(workers=1, timeout=TIMEOUT) as sandbox:
        sandbox._workers[0].facts["live_sessions"] = False  # as without PID namespaces
        with sandbox.session() as session:
            session.run("x = 40")
            stuck = session.run("x = 0\n" + INFINITE_LOOP)
            after = session.run("print(x + 2)")
            assert session_processes(sandbox) == []
    assert stuck.status == "timeout"
    assert after.stdout == "42\n"


# ----------------------------------------------------------------------------- closing


def test_close_ends_the_session_process(sandbox):
    before = session_processes(sandbox)
    session = sandbox.session()
    session.run("x = 1")
    pid = one_new_session(sandbox, before)
    session.close()
    assert not alive(pid)
    with pytest.raises(SandboxError, match="closed"):
        session.run("print(x)")
    session.close()  # idempotent


def test_a_dropped_session_is_ended_by_the_next_call(sandbox):
    before = session_processes(sandbox)
    session = sandbox.session()
    session.run("x = 1")
    pid = one_new_session(sandbox, before)
    del session
    gc.collect()
    sandbox.run("print(1)")
    assert not alive(pid)


def test_closing_the_sandbox_leaves_no_session_and_no_cgroup():
    sandbox = Sandbox(workers=2, timeout=TIMEOUT)
    sessions = [sandbox.session() for _ in range(4)]
    for session in sessions:
        session.run("x = 1")
    pids, uids = session_processes(sandbox), snippet_uids(sandbox)
    folders = [worker.cgroups.folder for worker in sandbox._workers]
    assert len(pids) == 4 and all(os.path.isdir(folder) for folder in folders)
    sandbox.close()
    assert not any(alive(pid) for pid in pids)
    assert not live_pids_of(uids)
    assert not any(os.path.exists(folder) for folder in folders)
    with pytest.raises(SandboxError):
        sessions[0].run("print(x)")
    sessions[0].close()


def test_a_session_cgroup_per_live_session():
    with Sandbox(workers=1, timeout=TIMEOUT, sessions=3) as sandbox:
        [worker] = sandbox._workers
        names = sorted(os.path.basename(path) for path in worker.cgroups.paths)
        assert names == ["0", "1", "s0", "s1", "s2"]
        with sandbox.session() as session:
            session.run("x = 1")
            [pid] = session_processes(sandbox)
            holding = [p for p in worker.cgroups.paths if pid in cgroups.members(p)]
        assert len(holding) == 1 and os.path.basename(holding[0]).startswith("s")


@pytest.mark.bwrap
def test_a_session_inside_bubblewrap():
    with Sandbox(workers=1, timeout=TIMEOUT, bwrap=True) as sandbox:
        assert sandbox.isolation["bwrap"] and sandbox.isolation["live_sessions"]
        with sandbox.session() as session:
            session.run("import random\nr = random.random()\nprint(r)")
            drawn = session.run("print(r)").stdout
            stuck = session.run(LONG_SLEEP)
            escaped = session.run(SETSID_ESCAPE)
            left = others(sandbox)
            after = session.run("print(r)")
            [pid] = session_processes(sandbox)
        assert stuck.status == "timeout" and escaped.stdout == "parent done\n"
        assert left == [] and after.stdout == drawn
        assert not alive(pid)
