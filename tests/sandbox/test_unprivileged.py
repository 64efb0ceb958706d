"""The sandbox's ordinary-user path, for real: the host runs as uid 65534 (nobody), so there is
no dedicated uid; isolation comes from a user + network namespace, PID namespaces and rlimits.

The venv's Python lives under /root, which nobody cannot read, so the host runs on the system
interpreter with a world-readable site dir holding only sympy and numpy (at the venv's versions)
and the repository on PYTHONPATH. One checker script runs every case and prints JSON; each test
asserts on one part of it. Switching to nobody needs root (the ``root`` marker); missing setpriv
or user namespaces FAIL these tests: they do not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.hostile import host_listener
from tests.support.paths import REPO
from tests.support.processes import command_line, live_pids_of

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
SECRET = "fake-secret-unprivileged"
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

CHECKER = r"""
import json, logging, os, sys, time
logging.basicConfig()
os.environ["WANDB_API_KEY"] = SECRET = sys.argv[2]
from genprm.sandbox import Sandbox
from genprm.sandbox.snippet import SESSION_NAME
from tests.support.hostile import FORK_BOMB, KILL_PARENT, LONG_SLEEP, SETSID_ESCAPE
from tests.support.processes import alive, process_name, snippet_processes

PORT = int(sys.argv[1])


def after_grace(pids, seconds=10.0):
    deadline = time.monotonic() + seconds
    while snippet_processes(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return snippet_processes(pids)


CASES = {
    "print": "print(1)",
    "sympy": "import sympy\nprint(sympy.simplify('(x**2 - 1)/(x - 1)'))",
    "env": (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in ['1', 'self', HOST] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as error:\n"
        "        print(pid, repr(error))\n"
    ).replace("HOST", repr(str(os.getpid()))),
    "sleep": LONG_SLEEP,
    "network": (
        f"import socket\nsocket.create_connection(('127.0.0.1', {PORT}), timeout=1)\n"
        "print('connected')"
    ),
    "fork_bomb": FORK_BOMB,
    "setsid": SETSID_ESCAPE,
    "kill_parent": KILL_PARENT,
    "after": "print(1)",
}

out = {"host_uid": os.getuid(), "host_pid": os.getpid(), "cases": {}}
with Sandbox(workers=1, timeout=2.0) as sandbox:
    out["isolation"] = sandbox.isolation
    out["workers_before"] = workers = sandbox.worker_pids()
    for name, code in CASES.items():
        started = time.monotonic()
        result = sandbox.run(code)
        out["cases"][name] = {
            "status": result.status,
            "stdout": result.stdout[:20000],
            "stderr": result.stderr[:20000],
            "feedback": result.feedback[:20000],
            "error_type": result.error_type,
            "wall_s": time.monotonic() - started,
            "left_immediately": snippet_processes(sandbox.worker_pids()),
            "left_after_grace": after_grace(sandbox.worker_pids()),
            "workers": sandbox.worker_pids(),
            "workers_alive": [alive(pid) for pid in sandbox.worker_pids()],
        }
    # The same hostile blocks in one session, between names it keeps.
    out["session"] = {}
    with sandbox.session() as session:
        for name in ("define", "sleep", "fork_bomb", "setsid", "use"):
            code = {"define": "x = 41", "use": "print(x + 1)"}.get(name, CASES.get(name))
            result = session.run(code)
            out["session"][name] = {
                "status": result.status,
                "stdout": result.stdout,
                "left": [
                    pid for pid in snippet_processes(sandbox.worker_pids())
                    if process_name(pid) != SESSION_NAME
                ],
            }
    out["session_left_after_close"] = after_grace(sandbox.worker_pids())
    out["workers_after"] = sandbox.worker_pids()
out["workers_alive_after_close"] = [alive(pid) for pid in workers]
print(json.dumps(out))
"""


# ----------------------------------------------------------------------------- helpers


def prerequisite_problems() -> list[str]:
    """What this machine lacks to run the ordinary-user path as nobody (empty: nothing)."""
    problems = []
    if shutil.which("setpriv") is None:
        problems.append("setpriv (util-linux) is not installed")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        problems.append(f"{SYSTEM_PYTHON} is missing")
    if problems:
        return problems
    probe = subprocess.run(
        [*SETPRIV, "unshare", "--user", "--net", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        problems.append(f"user namespaces are not available to nobody: {probe.stderr.strip()}")
    return problems


def require_prerequisites() -> None:
    problems = prerequisite_problems()
    if problems:
        pytest.fail(
            "cannot test the unprivileged sandbox path: " + "; ".join(problems), pytrace=False
        )


def pids_of(uid: int) -> dict[int, str | None]:
    """Live processes of ``uid``: pid -> command line."""
    return {pid: command_line(pid) for pid in live_pids_of({uid})}


def make_world_readable(path: Path) -> None:
    for directory, _, files in os.walk(path):
        os.chmod(directory, os.stat(directory).st_mode | 0o555)
        for name in files:
            file = os.path.join(directory, name)
            if not os.path.islink(file):
                os.chmod(file, os.stat(file).st_mode | 0o444)


@pytest.fixture(scope="session")
def unprivileged_site() -> Path:
    """sympy and numpy at the venv's versions, in a site dir that nobody can read."""
    pins = [f"{name}=={version(name)}" for name in ("sympy", "numpy")]
    site = Path(os.environ["GENPRM_CACHE_DIR"]) / "unprivileged-site"
    installed = all((site / f"{pin.replace('==', '-')}.dist-info").is_dir() for pin in pins)
    if not installed:
        staging = Path(tempfile.mkdtemp(prefix="unprivileged-site-", dir=site.parent))
        try:
            subprocess.run(
                [SYSTEM_PYTHON, "-m", "pip", "install", "--quiet", "--target", str(staging), *pins],
                check=True, timeout=600,
            )  # fmt: skip
            shutil.rmtree(site, ignore_errors=True)
            staging.rename(site)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    make_world_readable(site)
    for parent in site.parents:
        assert os.stat(parent).st_mode & stat.S_IXOTH, f"{parent} is not traversable by nobody"
    return site


@pytest.fixture(scope="module")
def checked(unprivileged_site):
    """Run the checker as nobody once: (its JSON, its stderr, processes of nobody left after)."""
    require_prerequisites()
    before = pids_of(NOBODY)
    scratch = Path(tempfile.mkdtemp(prefix="genprm-unprivileged-check-"))
    try:
        with host_listener() as (listener, port):
            os.chmod(scratch, 0o755)  # pytest's tmp_path lies under a 0700 directory
            script = scratch / "check_sandbox.py"
            script.write_text(CHECKER)
            script.chmod(0o644)
            command = [
                *SETPRIV, "env", "-i", "PATH=/usr/bin:/bin",
                f"PYTHONPATH={unprivileged_site}{os.pathsep}{REPO}",
                SYSTEM_PYTHON, str(script), str(port), SECRET,
            ]  # fmt: skip
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=180, cwd="/", check=False
            )
            listener.settimeout(0.3)
            try:
                connection, peer = listener.accept()
                connection.close()
                accepted = str(peer)
            except TimeoutError:
                accepted = None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, f"checker failed ({done.returncode}):\n{done.stderr[-5000:]}"
    deadline = time.monotonic() + 10
    while set(pids_of(NOBODY)) - set(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {pid: cmd for pid, cmd in pids_of(NOBODY).items() if pid not in before}
    return json.loads(done.stdout), done.stderr, left, accepted


# ----------------------------------------------------------------------------- tests


def test_prerequisites_setpriv_and_user_namespaces():
    assert not prerequisite_problems(), prerequisite_problems()


def test_isolation_facts(checked):
    report, *_ = checked
    assert report["host_uid"] == NOBODY
    isolation = report["isolation"]
    assert isolation["private_network"] is True
    assert isolation["pid_namespaces"] is True
    assert isolation["private_scratch"] is True
    assert isolation["uid"] is None
    assert any("dedicated uid" in item for item in isolation["missing"]), isolation
    # No memory cgroup without root: reported, with the lower process allowance.
    assert isolation["memory_cgroup"] is False
    assert any("memory cgroup" in item for item in isolation["missing"]), isolation


def test_one_warning_names_the_missing_dedicated_uid(checked):
    _, stderr, *_ = checked
    warnings = [line for line in stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith("WARNING:genprm.sandbox.pool:sandbox isolation is weaker")
    assert "dedicated uid (not root)" in warnings[0]


def test_print_and_sympy(checked):
    cases = checked[0]["cases"]
    assert (cases["print"]["status"], cases["print"]["stdout"]) == ("ok", "1\n")
    assert (cases["sympy"]["status"], cases["sympy"]["stdout"]) == ("ok", "x + 1\n")
    assert (cases["after"]["status"], cases["after"]["stdout"]) == ("ok", "1\n")


def test_environment_secret_does_not_reach_the_snippet(checked):
    case = checked[0]["cases"]["env"]
    assert case["status"] == "ok", case
    assert "'PATH'" in case["stdout"]
    assert SECRET not in case["stdout"] + case["stderr"] + case["feedback"]


def test_sleep_times_out(checked):
    case = checked[0]["cases"]["sleep"]
    assert case["status"] == "timeout"
    assert case["wall_s"] < 30  # far below the 600 s the snippet sleeps
    assert case["left_after_grace"] == []


def test_connecting_to_a_host_listener_fails(checked):
    report, _, _, accepted = checked
    case = report["cases"]["network"]
    assert case["status"] == "error", case
    assert "connected" not in case["stdout"]
    assert any(word in case["feedback"] for word in ("unreachable", "refused")), case
    assert accepted is None, f"the host listener accepted {accepted}"


def test_fork_bomb_is_contained(checked):
    case = checked[0]["cases"]["fork_bomb"]
    assert case["left_after_grace"] == [], case
    assert case["workers"] == checked[0]["workers_before"] and all(case["workers_alive"])
    assert checked[0]["cases"]["after"]["status"] == "ok"
    assert case["status"] in ("error", "timeout"), case


def test_setsid_escape_is_cleaned_up(checked):
    case = checked[0]["cases"]["setsid"]
    assert (case["status"], case["stdout"]) == ("ok", "parent done\n"), case
    assert case["left_immediately"] == [], case


def test_killing_the_parent_leaves_the_worker(checked):
    report = checked[0]
    case = report["cases"]["kill_parent"]
    assert case["status"] in ("ok", "killed", "error"), case
    assert case["workers"] == report["workers_before"] and all(case["workers_alive"])
    assert report["workers_after"] == report["workers_before"]


def test_nothing_of_nobody_remains(checked):
    report, _, left, _ = checked
    assert left == {}, f"processes of uid {NOBODY} outlived the checker: {left}"
    assert not any(report["workers_alive_after_close"])


def test_a_session_keeps_its_names_through_hostile_blocks_and_leaves_nothing(checked):
    report = checked[0]
    session = report["session"]
    assert session["sleep"]["status"] == "timeout"
    assert session["fork_bomb"]["status"] in ("error", "timeout"), session["fork_bomb"]
    assert (session["setsid"]["status"], session["setsid"]["stdout"]) == ("ok", "parent done\n")
    assert (session["use"]["status"], session["use"]["stdout"]) == ("ok", "42\n")
    assert all(block["left"] == [] for block in session.values()), session
    assert report["session_left_after_close"] == []
    assert report["workers_after"] == report["workers_before"]
