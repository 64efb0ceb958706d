"""The host side of genprm.sandbox inside a busy host process: thousands of descriptors, many
sandboxes, several processes using sandboxes at once (snippet uids), and what happens when an
isolation step the worker insists on fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genprm.sandbox import Sandbox, SandboxError, pool
from genprm.sandbox.uids import LOCK_DIR, UidRange, is_account
from tests.support.paths import REPO
from tests.support.processes import alive, live_pids_of

NOBODY = 65534


def run_python(program: str) -> subprocess.CompletedProcess:
    """``program`` in a fresh interpreter (its own descriptors, limits and exit handlers)."""
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def sleeper_as():
    """Start ``sleep`` under a given uid (root only); all of them are killed afterwards."""
    started = []

    def start(uid: int) -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------------- descriptors

MANY_DESCRIPTORS = """
import json, os, resource, signal
from genprm.sandbox import Sandbox

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
wanted = 4096
if hard != resource.RLIM_INFINITY and hard < wanted:
    hard = wanted  # needs root; an ordinary user's hard limit is usually higher anyway
resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # what a busy server holds
with Sandbox(workers=1, timeout=2.0) as sandbox:
    out = {"pipe_fd": sandbox._workers[0].process.stdout.fileno()}
    out["ok"] = sandbox.run("print(6 * 7)").stdout
    out["timeout"] = sandbox.run("while True:\\n    pass").status
    [old] = sandbox.worker_pids()
    os.kill(old, signal.SIGKILL)
    out["after_kill"] = sandbox.run("print(1)").status
    out["replaced"] = sandbox.worker_pids() != [old]
    out["new_pipe_fd"] = sandbox._workers[0].process.stdout.fileno()
    out["after_replacement"] = sandbox.run("print(2)").stdout
print(json.dumps(out))
"""


def test_a_host_holding_over_1024_descriptors_runs_snippets():
    done = run_python(MANY_DESCRIPTORS)
    assert done.returncode == 0, done.stderr[-5000:]
    out = json.loads(done.stdout)
    assert out["pipe_fd"] >= 1024 and out["new_pipe_fd"] >= 1024, out  # beyond select()'s reach
    assert out["ok"] == "42\n"
    assert out["timeout"] == "timeout"
    assert out["after_kill"] in ("killed", "ok") and out["replaced"], out
    assert out["after_replacement"] == "2\n"


# ----------------------------------------------------------------------------- exit handlers

MANY_SANDBOXES = """
import atexit, json


def report_at_exit():  # registered before the sandbox module's handler, so it runs after it
    exit_codes = [worker.process.poll() for sandbox in sandboxes for worker in sandbox._workers]
    closed = [sandbox.closed for sandbox in sandboxes]
    print(json.dumps({"closed": closed, "exit_codes": exit_codes}))


atexit.register(report_at_exit)
from genprm.sandbox import Sandbox

before = atexit._ncallbacks()
sandboxes = [Sandbox(workers=1) for _ in range(3)]
print(json.dumps({"handlers_added": atexit._ncallbacks() - before}))
# Ends without closing them.
"""


def test_sandboxes_share_one_exit_handler_that_closes_them_all():
    done = run_python(MANY_SANDBOXES)
    assert done.returncode == 0, done.stderr[-5000:]
    created, at_exit = (json.loads(line) for line in done.stdout.splitlines())
    assert created["handlers_added"] == 0
    assert at_exit["closed"] == [True] * 3
    assert len(at_exit["exit_codes"]) == 3 and None not in at_exit["exit_codes"], at_exit


def test_missing_bwrap_is_a_sandbox_error_naming_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="bubblewrap"):
        Sandbox(workers=1, bwrap=True)


# ----------------------------------------------------------------------------- snippet uids
# Every uid these tests run or pick is first leased from the real range, so that no sandbox on
# this machine (another test run's, say) uses it meanwhile. The range under test is then that
# one uid, with a lock folder of its own.


@pytest.fixture
def leased_uid():
    """Lease uids from the sandbox's real range for the test's duration."""
    leases = []

    def lease() -> int:
        leases.append(UidRange().reserve())
        return leases[-1].uid

    yield lease
    for held in leases:
        held.release()


def only(uid: int, lock_dir: Path, subid_files=()) -> UidRange:
    return UidRange(first=uid, count=1, lock_dir=str(lock_dir), subid_files=tuple(subid_files))


@pytest.mark.root
def test_a_uid_in_a_subordinate_range_is_not_picked(tmp_path, leased_uid):
    uid = leased_uid()
    subuid, subgid, unrelated = tmp_path / "subuid", tmp_path / "subgid", tmp_path / "other"
    subuid.write_text(f"broken line\nalice:{uid - 10}:11\n")
    subgid.write_text(f"bob:{uid}:65536\n")
    unrelated.write_text(f"carol:{uid + 1}:65536\n")
    assert only(uid, tmp_path / "a", [subuid]).reserve() is None
    assert only(uid, tmp_path / "b", [unrelated, subgid]).reserve() is None
    lease = only(uid, tmp_path / "c", [unrelated, tmp_path / "missing"]).reserve()
    assert lease.uid == uid
    lease.release()


@pytest.mark.root
def test_an_account_is_not_picked(tmp_path):
    assert is_account(NOBODY)
    assert only(NOBODY, tmp_path).reserve() is None


@pytest.mark.root
def test_a_uid_a_process_runs_under_is_not_picked(tmp_path, leased_uid, sleeper_as):
    uid = leased_uid()
    sleeper_as(uid)
    assert only(uid, tmp_path).reserve() is None


@pytest.mark.root
def test_a_reserved_uid_is_not_picked_again_until_released(tmp_path, leased_uid):
    uids = only(leased_uid(), tmp_path)
    first = uids.reserve()
    assert first is not None and uids.reserve() is None
    first.release()
    again = uids.reserve()
    assert again is not None and again.uid == first.uid
    again.release()


@pytest.mark.root
def test_no_free_uid_is_a_sandbox_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "SNIPPET_UIDS", only(NOBODY, tmp_path))
    with pytest.raises(SandboxError, match="no free snippet uid"):
        Sandbox(workers=1)


def lock_files_held() -> set[str]:
    """The uid lock files this process has open (an open one is a held reservation)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(LOCK_DIR + "/"):
                held.add(target)
    return held


@pytest.mark.root
def test_closing_a_sandbox_releases_its_uids():
    before = lock_files_held()
    sandbox = Sandbox(workers=2)
    uids = {worker.facts["uid"] for worker in sandbox._workers}
    assert lock_files_held() - before == {f"{LOCK_DIR}/{uid}" for uid in uids}
    sandbox.close()
    assert lock_files_held() == before


HOLDER = """
import json, sys
from genprm.sandbox import Sandbox

with Sandbox(workers=2) as sandbox:
    print(json.dumps([worker.facts["uid"] for worker in sandbox._workers]), flush=True)
    sys.stdin.readline()
"""


@pytest.mark.root
def test_sandboxes_in_two_processes_get_disjoint_uids():
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        held = [set(json.loads(holder.stdout.readline())) for holder in holders]
        with Sandbox(workers=1) as ours:
            held.append({ours.isolation["uid"]})
    finally:
        for holder in holders:
            holder.communicate("\n", timeout=60)
    assert [len(uids) for uids in held] == [2, 2, 1], held
    assert len(set().union(*held)) == 5, f"a uid was handed out twice: {held}"


SWEEPER = """
import json, os
from genprm.sandbox import uids, worker

worker_end, host_end = os.pipe()
os.dup2(worker_end, 0)  # a worker's stdin is its host: kept open, the host is still there
# The fallback where the kernel refuses PID namespaces: leftovers are swept by uid, and the
# snippet's /proc hides every other user's processes.
worker._become_namespace_init = lambda: False
lease = uids.UidRange().reserve()
config = {
    "memory_mb": 1024, "output_limit": 1 << 20, "bwrap": False, "uid": lease.uid, "sessions": 0
}
warm = worker.WarmWorker(config)
escape = (
    "import os, time\\n"
    "if os.fork() == 0:\\n"
    "    os.setsid()\\n"
    "    time.sleep(300)\\n"
    "print(os.getuid())\\n"
    # Its own /proc, without a PID namespace: only processes of its own uid are listed.
    "print(sorted({os.stat('/proc/' + p).st_uid for p in os.listdir('/proc') if p.isdigit()}))\\n"
)
result = warm.run({"code": escape, "prelude": [], "timeout": 10})
print(json.dumps({"uid": lease.uid, "pid_namespaces": warm.pid_namespaces, "result": result}))
"""


@pytest.mark.root
def test_the_uid_sweep_spares_processes_of_uids_it_did_not_reserve(leased_uid, sleeper_as):
    victim = sleeper_as(leased_uid())  # a neighbour in the range, not the sweeper's
    done = run_python(SWEEPER)
    assert done.returncode == 0, done.stderr[-5000:]
    out = json.loads(done.stdout)
    assert out["pid_namespaces"] is False  # the sweep by uid did run
    uid = out["uid"]
    assert (out["result"]["status"], out["result"]["stdout"]) == ("ok", f"{uid}\n[{uid}]\n")
    assert live_pids_of({out["uid"]}) == [], "the escaped snippet process was not swept"
    assert victim.poll() is None and alive(victim.pid), "the sweep killed a process not ours"


# ----------------------------------------------------------------------------- capabilities

REFUSE_CAPSET = """
import errno, os
from genprm.sandbox import isolation

def refused():
    if {condition}:
        raise OSError(errno.EPERM, "capset refused (simulated)")
    return real()

real = isolation.drop_capabilities
isolation.drop_capabilities = refused
"""


def with_sitecustomize(monkeypatch, folder: Path, condition: str) -> None:
    """Workers started from now on run ``REFUSE_CAPSET`` first (they get our sys.path)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(REFUSE_CAPSET.format(condition=condition))
    monkeypatch.syspath_prepend(str(folder))


def test_a_worker_that_cannot_drop_capabilities_does_not_start(monkeypatch, tmp_path):
    with_sitecustomize(monkeypatch, tmp_path / "always", "True")
    with pytest.raises(SandboxError, match="cannot drop capabilities"):
        Sandbox(workers=1)


@pytest.mark.root
def test_a_snippet_whose_capability_drop_fails_does_not_run(monkeypatch, tmp_path):
    # The worker's start-up check passes (as root); only the snippet child, under its uid, fails.
    with_sitecustomize(monkeypatch, tmp_path / "in_snippets", "os.getuid() != 0")
    with Sandbox(workers=1) as sandbox:
        result = sandbox.run("print('the snippet ran')")
    assert result.status == "killed", result
    assert result.stdout == ""
    assert result.error_type == "SandboxError"
    assert "capset refused (simulated)" in result.error_message, result
