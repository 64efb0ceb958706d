"""Hostile snippets against genprm.sandbox on the privileged path (root: a reserved uid per
worker, a PID namespace per snippet, a private network namespace, rlimits).

Every hostile case checks the aftermath: the host is alive, the workers are the same and alive,
nothing of the snippet is left running (no process of the snippet uid, no live descendant of a
worker), and the next snippet works. The ordinary-user path is in test_unprivileged.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from genprm.format import CODE_ERROR, CODE_TIMEOUT
from genprm.sandbox import STATUSES, ExecResult, Sandbox, SandboxError
from genprm.sandbox.isolation import proc_stat
from genprm.sandbox.uids import FIRST_UID, UID_COUNT
from tests.support.hostile import (
    FORK_BOMB,
    HUGE_OUTPUTS,
    INFINITE_LOOP,
    LONG_SLEEP,
    MEMORY_BOMBS,
    SETSID_ESCAPE,
    SIGTERM_IGNORED,
    STUBBORN_FORK_BOMB,
    host_listener,
)
from tests.support.paths import REPO
from tests.support.processes import (
    alive,
    live_pids_of,
    snippet_processes,
    snippet_uids,
    wait_for,
)

TIMEOUT = 2.0
pytestmark = [pytest.mark.root, pytest.mark.sandbox(timeout=TIMEOUT)]
# Far below what the hostile snippets would take on their own (100 s, 600 s): a result within
# this many seconds was cut off, on however busy a machine.
PROMPTLY_S = 30.0


# ----------------------------------------------------------------------------- helpers


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, D, Z, ...), or None when there is no such process."""
    stat = proc_stat(pid)
    return stat and stat[0]


def live_descendants(pid: int) -> list[int]:
    """Live snippet processes of a worker (its own processes excluded)."""
    return snippet_processes([pid])


def describe(pids) -> dict[int, str]:
    """pid -> its PPid, NSpid and Uid lines, for failure messages."""
    described = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                lines = [line for line in handle if line.startswith(("PPid", "NSpid", "Uid"))]
            described[pid] = " | ".join(" ".join(line.split()) for line in lines)
        except OSError:
            described[pid] = "gone"
    return described


def leftovers(pids, uids) -> dict:
    """What the snippets of these workers (running as these uids) left: by uid and by tree."""
    return {
        "by_uid": live_pids_of(uids),
        "by_tree": {pid: live_descendants(pid) for pid in pids if live_descendants(pid)},
    }


def nothing_left(pids, uids) -> bool:
    left = leftovers(pids, uids)
    return not left["by_uid"] and not left["by_tree"]


def check_result(result) -> ExecResult:
    assert isinstance(result, ExecResult)
    assert result.status in STATUSES
    return result


def assert_next_snippet_works(sandbox: Sandbox) -> None:
    result = check_result(sandbox.run("print(1)"))
    assert (result.status, result.stdout, result.feedback) == ("ok", "1\n", "1"), result


def assert_aftermath(
    sandbox: Sandbox, workers_before: list[int] | None = None, grace: float = 10.0
) -> None:
    """Contained: the host (this process) and the same workers are alive, nothing the snippet
    started is still running, and the next snippet works.

    A process the sandbox has just SIGKILLed may need a moment to finish dying (freeing a GB of
    memory, say), hence ``grace``; zombies waiting to be reaped by their worker do not count."""
    assert alive(os.getpid())
    pids, uids = sandbox.worker_pids(), snippet_uids(sandbox)
    if workers_before is not None:
        assert pids == workers_before, "a worker was replaced"
    assert all(alive(pid) for pid in pids), {pid: proc_state(pid) for pid in pids}
    assert wait_for(lambda: nothing_left(pids, uids), grace), leftovers(pids, uids)
    assert_next_snippet_works(sandbox)
    assert sandbox.worker_pids() == pids


SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def scratch_files_of(uids: set[int]) -> list[str]:
    """Host-visible files in the shared scratch folders owned by snippet uids, plus any
    fallback working folder (``genprm-snippet-*``) left behind."""
    found = []
    for root in SCRATCH:
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid in uids or entry.name.startswith(
                    "genprm-snippet-"
                ):
                    found.append(entry.path)
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ----------------------------------------------------------------------------- basics


def test_isolation_facts_on_root(sandbox):
    facts = sandbox.isolation
    assert facts == {
        "private_network": True,
        "pid_namespaces": True,
        "private_scratch": True,
        "memory_cgroup": True,
        "uid": sandbox._workers[0].facts["uid"],
        "bwrap": False,
        "live_sessions": True,
        "missing": [],
    }
    uids = snippet_uids(sandbox)
    assert len(uids) == 2, "each worker has a uid of its own"
    assert all(FIRST_UID <= uid < FIRST_UID + UID_COUNT for uid in uids), uids
    result = sandbox.run("import os\nprint(os.getuid(), os.getgid(), os.getpid(), os.getgroups())")
    uid, gid, pid, groups = result.stdout.split(" ", 3)
    assert int(uid) in uids and gid == uid
    assert pid == "1"  # init of its own PID namespace
    assert groups.strip() == "[]"


def test_workers_zero_is_a_value_error():
    with pytest.raises(ValueError):
        Sandbox(workers=0)


@pytest.mark.parametrize("code, prelude", [(b"print(1)", ()), (None, ()), ("print(1)", [1])])
def test_non_string_code_is_a_type_error(sandbox, code, prelude):
    with pytest.raises(TypeError):
        sandbox.run(code, prelude=prelude)


# ----------------------------------------------------------------------------- time


def test_infinite_loop_times_out(sandbox):
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run(INFINITE_LOOP))
    assert result.status == "timeout"
    assert result.feedback == CODE_TIMEOUT
    assert TIMEOUT - 0.1 < result.duration_s < PROMPTLY_S
    assert_aftermath(sandbox, workers)


def test_long_sleep_returns_at_the_timeout(sandbox):
    workers = sandbox.worker_pids()
    started = time.monotonic()
    result = check_result(sandbox.run(LONG_SLEEP))
    assert time.monotonic() - started < PROMPTLY_S
    assert result.status == "timeout"
    assert result.feedback == CODE_TIMEOUT
    assert_aftermath(sandbox, workers)


def test_sigterm_ignoring_snippet_times_out_and_is_gone(sandbox):
    workers = sandbox.worker_pids()
    started = time.monotonic()
    result = check_result(sandbox.run(SIGTERM_IGNORED))
    assert time.monotonic() - started < PROMPTLY_S
    assert result.status == "timeout"
    assert_aftermath(sandbox, workers)


def test_per_call_timeout_overrides_the_default(sandbox):
    # Longer than the default, which would have cut this snippet off:
    longer = check_result(
        sandbox.run(f"import time\ntime.sleep({TIMEOUT + 1})\nprint(1)", timeout=60)
    )
    assert (longer.status, longer.stdout) == ("ok", "1\n"), longer
    # Shorter than the default:
    with Sandbox(workers=1, timeout=600) as patient:
        shorter = check_result(patient.run("import time\ntime.sleep(600)", timeout=1))
    assert shorter.status == "timeout"
    assert shorter.duration_s < PROMPTLY_S


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("code", list(MEMORY_BOMBS.values()), ids=list(MEMORY_BOMBS))
def test_memory_bomb_is_a_memory_status(sandbox, code):
    workers = sandbox.worker_pids()
    # A generous per-call timeout: the status must come from the memory limit, not the clock.
    result = check_result(sandbox.run(code, timeout=60))
    assert result.status == "memory", result
    assert result.feedback.startswith(CODE_ERROR.format(exc_type="MemoryError", message=""))
    assert_aftermath(sandbox, workers)


# ----------------------------------------------------------------------------- processes


def test_fork_bomb_is_contained(sandbox):
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run(FORK_BOMB))
    assert_aftermath(sandbox, workers)  # contained first ...
    assert not live_pids_of(snippet_uids(sandbox))
    # ... then the status: the snippet hit RLIMIT_NPROC (BlockingIOError) or the deadline.
    assert result.status in ("error", "timeout"), result


def test_fork_bomb_that_survives_fork_errors_is_contained(sandbox):
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run(STUBBORN_FORK_BOMB))
    assert result.status == "timeout", result
    assert_aftermath(sandbox, workers)
    assert not live_pids_of(snippet_uids(sandbox))


def test_error_after_fork_is_reported_as_an_error(sandbox):
    """Parent and child of a fork both run the rest of the snippet: the error must survive."""
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run("import os\nos.fork()\n1 / 0"))
    assert_aftermath(sandbox, workers)
    assert result.status == "error", result
    assert result.feedback == "Code execute Error: ZeroDivisionError: division by zero"


def test_setsid_escape_is_gone_when_the_result_returns(sandbox):
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run(SETSID_ESCAPE))
    left = leftovers(workers, snippet_uids(sandbox))  # right away: no grace for the escapee
    assert (result.status, result.stdout) == ("ok", "parent done\n"), result
    # The escaped child, holding the pipes for 100 s, did not hold up the result.
    assert result.duration_s < PROMPTLY_S
    assert not left["by_uid"] and not left["by_tree"], left
    assert_aftermath(sandbox, workers)


@pytest.mark.parametrize("target", ["os.getppid()", "WORKER", "-1", "0"])
def test_killing_the_parent_leaves_host_and_workers_alive(sandbox, target):
    workers = sandbox.worker_pids()
    if target == "WORKER":
        targets = workers
    else:
        targets = [target]
    for victim in targets:
        code = f"import os\nos.kill({victim}, 9)\nprint('still here')"
        result = check_result(sandbox.run(code))
        if victim in workers:  # a pid outside its PID namespace, of another uid
            assert result.status == "error", result
            assert result.error_type in ("ProcessLookupError", "PermissionError"), result
        else:  # at most the snippet kills itself
            assert result.status in ("ok", "killed", "error"), result
        assert all(alive(pid) for pid in workers)
        assert_aftermath(sandbox, workers)


def test_fifty_threads_join(sandbox):
    code = (
        "import threading, time\n"
        "threads = [threading.Thread(target=time.sleep, args=(0.1,)) for _ in range(50)]\n"
        "for thread in threads:\n    thread.start()\n"
        "for thread in threads:\n    thread.join()\n"
        "print(threading.active_count())\n"
    )
    result = check_result(sandbox.run(code))
    assert (result.status, result.stdout) == ("ok", "1\n"), result


# ----------------------------------------------------------------------------- files


def test_100mb_file_write_fails_and_leaves_nothing(sandbox):
    workers = sandbox.worker_pids()
    code = (
        "import os\n"
        "print(os.getcwd(), flush=True)\n"
        "with open('big.bin', 'wb') as handle:\n"
        "    handle.write(b'a' * (100 << 20))\n"
    )
    result = check_result(sandbox.run(code))
    assert result.status == "error", result
    assert result.error_type == "OSError" and "File too large" in result.feedback, result
    assert result.stdout.strip() == "/tmp"  # the snippet's own tmpfs, not the host's /tmp
    assert not Path("/tmp/big.bin").exists()
    assert scratch_files_of(snippet_uids(sandbox)) == []
    assert_aftermath(sandbox, workers)


@pytest.mark.parametrize("where", ["tmp", "work"])
def test_write_outside_the_working_dir_does_not_persist(sandbox, where):
    path = Path(f"/tmp/escape-{uuid.uuid4().hex}") if where == "tmp" else Path("/work/x")
    assert not path.exists(), f"{path} exists before the test"
    workers = sandbox.worker_pids()
    try:
        code = (
            f"with open({str(path)!r}, 'w') as handle:\n    handle.write('escaped')\nprint('wrote')"
        )
        result = check_result(sandbox.run(code))
        if where == "work":
            assert result.status == "error" and result.error_type == "PermissionError", result
        assert result.status in ("ok", "error")
        assert_aftermath(sandbox, workers)
        persisted = path.exists()
        owner = path.stat().st_uid if persisted else None
        assert not persisted, (
            f"a snippet's file outlived it: {path} (status {result.status}, owner uid {owner})"
        )
    finally:
        path.unlink(missing_ok=True)


def test_reading_a_root_only_file_is_denied(sandbox):
    result = check_result(sandbox.run("print(open('/etc/shadow').read())"))
    assert result.status == "error"
    assert result.error_type == "PermissionError", result
    assert result.stdout == ""


# ----------------------------------------------------------------------------- secrets and network

SECRETS = {
    "WANDB_API_KEY": "fake-secret-wandb",
    "HF_TOKEN": "fake-secret-hf",
    "OPENAI_API_KEY": "fake-secret-openai",
}


def test_environment_secrets_do_not_reach_snippets(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with Sandbox(workers=1, timeout=TIMEOUT) as fresh:
        [worker] = fresh.worker_pids()
        with open(f"/proc/{worker}/environ", "rb") as handle:
            worker_environ = handle.read().decode()
        code = (
            "import os\n"
            "print(dict(os.environ))\n"
            f"for path in ['/proc/1/environ', '/proc/{worker}/environ',\n"
            f"             '/proc/{os.getpid()}/environ', '/proc/self/environ']:\n"
            "    try:\n"
            "        print(path, open(path, 'rb').read())\n"
            "    except OSError as error:\n"
            "        print(path, repr(error))\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try:\n"
            "            print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
            "        except OSError:\n"
            "            pass\n"
        )
        result = check_result(fresh.run(code))
        assert result.status == "ok", result
        assert "'PATH'" in result.stdout  # the snippet did print its environment
        seen = result.stdout + result.stderr + result.feedback
        for name, value in SECRETS.items():
            assert value not in seen, f"{name} leaked into the snippet"
            assert value not in worker_environ, f"{name} reached the worker"
        assert_aftermath(fresh)


def test_connecting_to_a_host_listener_fails(sandbox):
    with host_listener() as (listener, port):
        code = (
            "import socket\n"
            f"connection = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "print('connected')\n"
        )
        result = check_result(sandbox.run(code))
        assert result.status == "error", result
        assert "connected" not in result.stdout
        assert any(word in result.feedback for word in ("unreachable", "refused")), result
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert_aftermath(sandbox)


# ----------------------------------------------------------------------------- exits and output


def test_sys_exit_3_is_an_error(sandbox):
    result = check_result(sandbox.run("import sys\nsys.exit(3)"))
    assert result.status == "error"
    assert result.feedback == "Code execute Error: SystemExit: 3"


def test_os_exit_0_is_ok(sandbox):
    result = check_result(sandbox.run("import os\nprint('before', flush=True)\nos._exit(0)"))
    assert (result.status, result.stdout) == ("ok", "before\n")


@pytest.mark.parametrize("code", list(HUGE_OUTPUTS.values()), ids=list(HUGE_OUTPUTS))
def test_huge_output_hits_the_output_limit_quickly(sandbox, code):
    workers = sandbox.worker_pids()
    result = check_result(sandbox.run(code, timeout=60))
    assert result.status == "output_limit", result
    assert result.duration_s < PROMPTLY_S  # stopped at the cap, long before the clock
    assert 0 < len(result.stdout.encode()) <= 1 << 20
    assert result.feedback.startswith("Code execute Error: OutputLimitExceeded")
    assert_aftermath(sandbox, workers)


def test_non_utf8_output_is_replaced(sandbox):
    result = check_result(sandbox.run("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok\\n')"))
    assert result.status == "ok"
    assert "\ufffd" in result.stdout and " ok" in result.stdout


# ----------------------------------------------------------------------------- Python errors


def test_deep_recursion_is_a_recursion_error(sandbox):
    result = check_result(sandbox.run("def f(n):\n    return f(n + 1)\nf(0)"))
    assert result.status == "error"
    assert result.error_type == "RecursionError"
    assert result.feedback.startswith("Code execute Error: RecursionError: maximum recursion depth")


def test_unbounded_recursion_limit_is_contained(sandbox):
    workers = sandbox.worker_pids()
    code = "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return f(n + 1)\nf(0)"
    result = check_result(sandbox.run(code, timeout=15))
    assert result.status in ("error", "killed"), result
    assert_aftermath(sandbox, workers)


@pytest.mark.parametrize("code", ["def f(:\n    pass", "x = 1\nprint('unclosed"])
def test_syntax_error_matches_in_process_exec(sandbox, code):
    try:
        exec(compile(code, "<string>", "exec"), {})  # noqa: S102 - the reference behaviour
    except SyntaxError as error:
        expected = CODE_ERROR.format(exc_type="SyntaxError", message=str(error))
    else:
        raise AssertionError("not a syntax error")
    result = check_result(sandbox.run(code))
    assert result.status == "error"
    assert result.feedback == expected


# ----------------------------------------------------------------------------- prelude


def test_prelude_names_reach_the_snippet_and_its_output_is_hidden(sandbox):
    prelude = ["x = 41", "print('from the prelude')", "def g():\n    return x + 1"]
    result = check_result(sandbox.run("print(g())", prelude=prelude))
    assert (result.status, result.stdout, result.feedback) == ("ok", "42\n", "42")


def test_prelude_exception_does_not_stop_the_snippet(sandbox):
    prelude = ["y = 1", "1 / 0", "z = y + 1", "undefined_name"]
    result = check_result(sandbox.run("print(z)", prelude=prelude))
    assert (result.status, result.stdout) == ("ok", "2\n"), result


# ----------------------------------------------------------------------------- concurrency


def test_run_many_keeps_order(sandbox):
    rng = random.Random(0)
    jobs = []
    for index in range(40):
        code = f"import time\ntime.sleep({rng.uniform(0, 0.05):.3f})\nprint({index} + offset)"
        jobs.append((code, ["offset = 0"]) if index % 2 else f"offset = 0\n{code}")
    results = sandbox.run_many(jobs)
    assert [(r.status, r.stdout) for r in results] == [("ok", f"{i}\n") for i in range(40)]


def test_arun_with_gather(sandbox):
    async def main():
        return await asyncio.gather(*(sandbox.arun(f"print({i} * {i})") for i in range(6)))

    results = asyncio.run(main())
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)]


def test_run_is_thread_safe(sandbox):
    results: dict[tuple[int, int], ExecResult] = {}
    errors = []

    def worker(thread: int) -> None:
        try:
            for round_ in range(4):
                results[thread, round_] = sandbox.run(f"print({thread} * 100 + {round_})")
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 32
    for (thread, round_), result in results.items():
        assert (result.status, result.stdout) == ("ok", f"{thread * 100 + round_}\n")


# ----------------------------------------------------------------------------- worker loss


def test_worker_killed_from_outside_is_replaced():
    with Sandbox(workers=1, timeout=TIMEOUT) as fresh:
        [old], old_uids = fresh.worker_pids(), snippet_uids(fresh)
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: not alive(old))
        result = check_result(fresh.run("print(1)"))
        assert result.status in ("killed", "ok"), result
        if result.status == "ok":
            assert result.stdout == "1\n"
        [new] = fresh.worker_pids()
        assert new != old and alive(new)
        assert_next_snippet_works(fresh)
        assert wait_for(lambda: nothing_left([old, new], old_uids | snippet_uids(fresh)))


def test_worker_killed_mid_snippet_gives_killed_and_leaves_nothing():
    with Sandbox(workers=1, timeout=5.0) as fresh:
        [old], old_uids = fresh.worker_pids(), snippet_uids(fresh)
        box: dict = {}
        thread = threading.Thread(
            target=lambda: box.setdefault("r", fresh.run("import time\ntime.sleep(600)"))
        )
        thread.start()
        try:
            assert wait_for(lambda: live_pids_of(old_uids)), "the snippet never started"
            os.kill(old, signal.SIGKILL)
            thread.join(PROMPTLY_S)
            assert not thread.is_alive(), "run() did not return after its worker died"
            assert check_result(box["r"]).status == "killed"
            assert_next_snippet_works(fresh)
            assert wait_for(lambda: not live_pids_of(old_uids)), (
                f"the snippet outlived its worker: {describe(live_pids_of(old_uids))}"
            )
        finally:
            for pid in live_pids_of(old_uids):  # do not leave a failure's debris running
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- leaks


def test_thousand_mixed_snippets_leak_nothing(sandbox):
    workers = sandbox.worker_pids()
    fds_before = open_fds()
    kinds = [
        ("print({i})", "ok", "{i}\n"),
        ("raise ValueError({i})", "error", ""),
        ("print('x', end='')", "ok", "x"),
        ("import time\ntime.sleep(0.002)", "ok", ""),
    ]
    for i in range(1000):
        code, status, stdout = kinds[i % len(kinds)]
        result = sandbox.run(code.format(i=i))
        assert (result.status, result.stdout) == (status, stdout.format(i=i)), (i, result)
        if status == "error":
            assert result.feedback == f"Code execute Error: ValueError: {i}"
    assert sandbox.worker_pids() == workers
    assert {pid: live_descendants(pid) for pid in workers} == {pid: [] for pid in workers}
    assert not live_pids_of(snippet_uids(sandbox))
    assert open_fds() <= fds_before + 2, (fds_before, open_fds())
    assert scratch_files_of(snippet_uids(sandbox)) == []


def test_close_removes_workers():
    fresh = Sandbox(workers=2, timeout=TIMEOUT)
    workers, uids = fresh.worker_pids(), snippet_uids(fresh)
    assert fresh.run("print(1)").status == "ok"
    fresh.close()
    assert not any(alive(pid) for pid in workers)
    assert not live_pids_of(uids)
    with pytest.raises(SandboxError):
        fresh.run("print(1)")
    fresh.close()  # idempotent


# ----------------------------------------------------------------------------- host shutdown

# The host starts with the default dispositions of SIGINT (KeyboardInterrupt) and SIGTERM
# whatever launched the tests: a background job (`make test &`, CI) inherits SIGINT ignored.
HOST_PROGRAM = """
import json, signal, threading
from genprm.sandbox import Sandbox

signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
with Sandbox(workers=2, timeout=600) as sandbox:
    uids = [worker.facts["uid"] for worker in sandbox._workers]
    print(json.dumps([sandbox.worker_pids(), uids]), flush=True)
    threads = [
        threading.Thread(target=sandbox.run, args=("import time\\ntime.sleep(600)",))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_host_signal_leaves_no_workers_or_snippets(signum):
    host = subprocess.Popen(
        [sys.executable, "-c", HOST_PROGRAM],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert select.select([host.stdout], [], [], 60)[0], "the host program printed nothing"
        line = host.stdout.readline()
        workers, uids = json.loads(line)
        uids = set(uids)
        assert len(workers) == len(uids) == 2, (line, host.poll())
        assert wait_for(
            lambda: {os.stat(f"/proc/{p}").st_uid for p in live_pids_of(uids)} == uids
        ), "the sleeping snippets never started"
        host.send_signal(signum)
        host.wait(timeout=PROMPTLY_S)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
    assert wait_for(lambda: not any(alive(p) for p in workers) and not live_pids_of(uids)), {
        "workers": {pid: proc_state(pid) for pid in workers},
        "snippets": live_pids_of(uids),
    }


def test_close_closes_every_worker_even_when_one_fails(monkeypatch):
    """A worker left open would keep a request's thread, and so the host's exit, waiting (the
    SIGINT host above hung so once)."""
    sandbox = Sandbox(workers=2, timeout=TIMEOUT)
    workers = sandbox.worker_pids()
    first = sandbox._workers[0]
    real_close = first.close

    def failing_close(wait: float = 5.0) -> None:
        real_close(wait)
        raise OSError("cannot remove the cgroup")

    monkeypatch.setattr(first, "close", failing_close)
    with pytest.raises(OSError, match="cannot remove"):
        sandbox.close()
    assert wait_for(lambda: not any(alive(pid) for pid in workers))


@pytest.mark.root
def test_a_worker_killed_by_its_request_while_closing_is_released_once(monkeypatch):
    """The thread whose request saw the worker die kills it while close() closes it: its
    cgroups are removed and its uid given back once, with no error in either thread."""
    from genprm.sandbox import pool

    sandbox = Sandbox(workers=1, timeout=TIMEOUT)
    [worker] = sandbox._workers
    lease, cgroups = worker.uid_lease, worker.cgroups
    inside, most_inside, releases = [0], [0], []
    real_remove, real_release = cgroups.remove, lease.release

    def slow_remove(timeout: float = 10.0) -> None:
        inside[0] += 1
        most_inside[0] = max(most_inside[0], inside[0])
        time.sleep(0.3)
        real_remove(timeout)
        inside[0] -= 1

    def counted_release() -> None:
        releases.append(threading.current_thread().name)
        real_release()

    monkeypatch.setattr(cgroups, "remove", slow_remove)
    monkeypatch.setattr(lease, "release", counted_release)
    errors = []

    def kill() -> None:
        try:
            worker.kill()
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    killer = threading.Thread(target=kill)
    killer.start()
    time.sleep(0.05)
    sandbox.close()
    killer.join()
    assert not errors and most_inside[0] == 1 and len(releases) == 1, (errors, releases)
    assert not os.path.exists(cgroups.folder)
    again = pool.SNIPPET_UIDS.lease(lease.uid)
    assert again is not None  # the uid is free again
    again.release()


def test_python_paths_under_tmp_stay_importable_and_read_only(monkeypatch):
    """A checkout (virtual environment, package) under /tmp is not hidden by the snippet's
    private /tmp: it stays visible, read-only."""
    import shutil
    import tempfile

    from genprm.sandbox.scratch import shadowed

    folder = tempfile.mkdtemp(prefix="genprm-checkout-", dir="/tmp")
    try:
        os.chmod(folder, 0o755)
        Path(folder, "shadow_probe.py").write_text("VALUE = 41\n")
        Path(folder, "shadow_probe.py").chmod(0o644)
        monkeypatch.syspath_prepend(folder)
        assert shadowed([folder, folder + "/sub", "/usr/lib"], ["/tmp", "/var/tmp"]) == [folder]
        with Sandbox(workers=1) as sandbox:
            assert sandbox.isolation["private_scratch"]
            result = sandbox.run("import shadow_probe\nprint(shadow_probe.VALUE + 1)")
            assert result.status == "ok" and result.stdout == "42\n", result
            write = sandbox.run(f"open({folder + '/new.py'!r}, 'w')")
            assert write.status == "error" and write.error_type in ("OSError", "PermissionError")
            assert sandbox.run("open('/tmp/mine', 'w').write('x')").status == "ok"
        assert not Path(folder, "new.py").exists()
    finally:
        shutil.rmtree(folder)
