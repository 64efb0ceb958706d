"""``Sandbox(bwrap=True)`` for real: workers inside bubblewrap, with a read-only view of only the
system, the Python installation, the venv and genprm. As root (these tests) snippets still run
under a reserved uid per worker; the ordinary-user path runs once as uid 65534 at the end.

The ``root`` and ``bwrap`` markers skip these tests where root or bubblewrap is missing (and
fail them under CI; ``make test`` installs bubblewrap). Missing setpriv or user namespaces FAIL
the ordinary-user test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import pytest

from genprm.format import CODE_TIMEOUT
from genprm.sandbox import Sandbox, SandboxError
from genprm.sandbox.isolation import descendants
from genprm.sandbox.snippet import WAITING_NAME
from genprm.sandbox.uids import FIRST_UID, UID_COUNT
from tests.support.hostile import (
    FORK_BOMB,
    HUGE_OUTPUTS,
    INFINITE_LOOP,
    KILL_PARENT,
    MEMORY_BOMBS,
    host_listener,
)
from tests.support.paths import REPO
from tests.support.processes import alive, live_pids_of, process_name, snippet_uids, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

TIMEOUT = 2.0
PROMPTLY_S = 30.0  # far below the 600 s the sleeping snippets would take
SECRET = "fake-secret-bwrap"
# A standard-library module and a site-packages one that the worker does not import.
NOT_PREIMPORTED = ("wave", "pluggy")
IMPORT_SNIPPET = (
    "import os, sys\n"
    f"print(sorted(set({NOT_PREIMPORTED!r}) & set(sys.modules)))\n"
    f"import {', '.join(NOT_PREIMPORTED)}\n"
    "print(os.getuid())\n"
)


# ----------------------------------------------------------------------------- helpers


def serving_processes(sandbox: Sandbox) -> set[int]:
    """bwrap and the worker processes below it (the zygote too, but not the snippet process
    waiting for the next request, which is new each time), taken while no snippet runs."""
    return {
        p
        for pid in sandbox.worker_pids()
        for p in [pid, *descendants(pid)]
        if process_name(p) != WAITING_NAME
    }


def leftovers(sandbox: Sandbox, serving: set[int]) -> list[int]:
    """Live processes the snippets left: below a worker, or running as a snippet uid."""
    below = [
        p
        for pid in sandbox.worker_pids()
        for p in descendants(pid)
        if p not in serving and process_name(p) != WAITING_NAME
    ]
    return sorted({p for p in below if alive(p)} | set(live_pids_of(snippet_uids(sandbox))))


def assert_aftermath(sandbox: Sandbox, serving: set[int]) -> None:
    """Contained: the same workers are alive, nothing of the snippet runs, the next one works."""
    assert serving_processes(sandbox) == serving, "a worker was replaced"
    assert all(alive(pid) for pid in serving)
    assert wait_for(lambda: not leftovers(sandbox, serving)), leftovers(sandbox, serving)
    result = sandbox.run("print(1)")
    assert (result.status, result.stdout) == ("ok", "1\n"), result


@pytest.fixture(scope="module")
def boxed():
    """(sandbox, its serving processes), started with a secret in the host's environment."""
    saved = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = SECRET
    try:
        with Sandbox(workers=2, timeout=TIMEOUT, bwrap=True) as sandbox:
            yield sandbox, serving_processes(sandbox)
    finally:
        if saved is None:
            del os.environ["WANDB_API_KEY"]
        else:
            os.environ["WANDB_API_KEY"] = saved


# ----------------------------------------------------------------------------- the view


def test_isolation_facts_report_bwrap(boxed):
    sandbox, _ = boxed
    facts = sandbox.isolation
    assert facts["bwrap"] is True
    assert facts["private_network"] and facts["pid_namespaces"] and facts["private_scratch"]
    assert facts["missing"] == []
    uids = snippet_uids(sandbox)
    assert len(uids) == 2 and all(FIRST_UID <= uid < FIRST_UID + UID_COUNT for uid in uids)
    result = sandbox.run("import os\nprint(os.getuid(), os.getpid())")
    uid, pid = result.stdout.split()
    assert int(uid) in uids and pid == "1"


def test_a_module_the_worker_did_not_import_imports_under_the_dropped_uid(boxed):
    sandbox, serving = boxed
    result = sandbox.run(IMPORT_SNIPPET)
    assert result.status == "ok", result
    preimported, uid = result.stdout.splitlines()
    assert preimported == "[]"  # the import really happened in the snippet
    assert int(uid) in snippet_uids(sandbox)
    assert_aftermath(sandbox, serving)


def test_without_bwrap_the_dropped_uid_cannot_import_it():
    """The contrast, where it holds: other uids cannot reach the Python installation."""
    parents = Path(sys.base_prefix).parents
    if not any(not os.stat(folder).st_mode & stat.S_IXOTH for folder in parents):
        pytest.skip(f"every uid can reach {sys.base_prefix} here")
    with Sandbox(workers=1, timeout=TIMEOUT) as plain:
        result = plain.run(IMPORT_SNIPPET)
    assert result.status == "error", result
    assert result.error_type == "ModuleNotFoundError", result


def test_python_installation_and_site_packages_are_read_only(boxed):
    sandbox, serving = boxed
    site_packages = sysconfig.get_paths()["purelib"]
    folders = [sys.base_prefix, sys.prefix, site_packages, str(REPO / "genprm")]
    target = Path(site_packages) / "genprm_bwrap_probe.py"
    code = (
        "import os\n"
        f"print([bool(os.statvfs(path).f_flag & os.ST_RDONLY) for path in {folders!r}])\n"
        f"open({str(target)!r}, 'w').write('x = 1')\n"
    )
    try:
        result = sandbox.run(code)
        assert result.stdout == "[True, True, True, True]\n", result
        assert result.status == "error", result
        assert result.error_type == "OSError" and "Read-only file system" in result.feedback, result
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
    assert_aftermath(sandbox, serving)


def test_host_files_outside_the_view_are_invisible(boxed):
    sandbox, serving = boxed
    (REPO / ".cache").mkdir(exist_ok=True)
    secret_dir = Path(tempfile.mkdtemp(prefix="bwrap-secret-", dir=REPO / ".cache"))
    try:
        secret = secret_dir / "token.txt"
        secret.write_text(SECRET)
        for path in [secret, REPO / "pyproject.toml", Path("/etc/passwd")]:
            result = sandbox.run(f"print(open({str(path)!r}).read())")
            assert (result.status, result.error_type) == ("error", "FileNotFoundError"), (
                path,
                result,
            )
            assert SECRET not in result.stdout
    finally:
        shutil.rmtree(secret_dir)
    assert_aftermath(sandbox, serving)


def test_etc_shadow_is_not_readable(boxed):
    sandbox, _ = boxed
    result = sandbox.run("print(open('/etc/shadow').read())")
    assert (result.status, result.error_type, result.stdout) == ("error", "FileNotFoundError", "")


def test_environment_secret_is_invisible(boxed):
    sandbox, serving = boxed
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in ['self', '1'] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = sandbox.run(code)
    assert result.status == "ok", result
    assert "'PATH'" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    for pid in serving:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            assert SECRET.encode() not in handle.read(), f"the secret reached {pid}"


def test_connecting_to_a_host_listener_fails(boxed):
    sandbox, serving = boxed
    with host_listener() as (listener, port):
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        result = sandbox.run(code + "print('connected')")
        assert result.status == "error", result
        assert any(word in result.feedback for word in ("unreachable", "refused")), result
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert_aftermath(sandbox, serving)


def test_sympy_snippet(boxed):
    sandbox, _ = boxed
    result = sandbox.run('import sympy; print(sympy.simplify("x**2-1"))')
    assert (result.status, result.stdout) == ("ok", "x**2 - 1\n"), result


# ----------------------------------------------------------------------------- hostile snippets


@pytest.mark.parametrize(
    "code, statuses",
    [
        (INFINITE_LOOP, ["timeout"]),
        (MEMORY_BOMBS["4GB-string"], ["memory"]),
        (FORK_BOMB, ["error", "timeout"]),
        (KILL_PARENT, ["ok", "killed", "error"]),
        (HUGE_OUTPUTS["one-100MB-write"], ["output_limit"]),
    ],
    ids=["infinite-loop", "memory-bomb", "fork-bomb", "kill-parent", "100MB-print"],
)
def test_hostile_snippet_is_contained(boxed, code, statuses):
    sandbox, serving = boxed
    result = sandbox.run(code, timeout=TIMEOUT)
    assert result.status in statuses, result
    if result.status == "timeout":
        assert result.feedback == CODE_TIMEOUT
    assert_aftermath(sandbox, serving)


def test_killing_bwrap_mid_snippet_replaces_the_worker_and_leaves_nothing():
    with Sandbox(workers=1, timeout=5.0, bwrap=True) as fresh:
        old = serving_processes(fresh)
        uids = snippet_uids(fresh)
        box: dict = {}
        thread = threading.Thread(
            target=lambda: box.setdefault("r", fresh.run("import time\ntime.sleep(600)"))
        )
        thread.start()
        assert wait_for(lambda: leftovers(fresh, old)), "the snippet never started"
        os.kill(fresh.worker_pids()[0], signal.SIGKILL)
        thread.join(PROMPTLY_S)
        assert not thread.is_alive(), "run() did not return after bwrap died"
        assert box["r"].status == "killed"
        assert wait_for(lambda: not any(alive(pid) for pid in old) and not live_pids_of(uids))
        assert fresh.run("print(1)").stdout == "1\n"


def test_close_leaves_no_processes():
    fresh = Sandbox(workers=2, timeout=TIMEOUT, bwrap=True)
    serving, uids = serving_processes(fresh), snippet_uids(fresh)
    assert fresh.run("print(1)").status == "ok"
    fresh.close()
    assert wait_for(lambda: not any(alive(pid) for pid in serving)), serving
    assert not leftovers(fresh, serving) and snippet_uids(fresh) == uids
    with pytest.raises(SandboxError):
        fresh.run("print(1)")


# ----------------------------------------------------------------------------- as an ordinary user

NOBODY = 65534
CHECKER = r"""
import json, logging, os, sys
logging.basicConfig()
os.environ["WANDB_API_KEY"] = sys.argv[1]
from genprm.sandbox import Sandbox
from tests.support.hostile import FORK_BOMB, LONG_SLEEP

CASES = {
    "import": "import wave\nprint(wave.__name__)",
    "passwd": "print(open('/etc/passwd').read())",
    "repo": "print(open(REPO + '/pyproject.toml').read())".replace("REPO", repr(sys.argv[2])),
    "environ": "import os\nprint(dict(os.environ), open('/proc/self/environ', 'rb').read())",
    "sleep": LONG_SLEEP,
    "fork_bomb": FORK_BOMB,
    "after": "print(1)",
}
out = {}
with Sandbox(workers=1, timeout=2.0, bwrap=True) as sandbox:
    out["isolation"] = sandbox.isolation
    for name, code in CASES.items():
        result = sandbox.run(code)
        out[name] = [result.status, result.error_type, result.stdout]
print(json.dumps(out))
"""


def test_ordinary_user_runs_the_workers_in_bwrap():
    """uid 65534 on the system Python (root's venv is unreadable to it): bwrap makes a user
    namespace mapping only that uid, so there is no dedicated uid, and everything else holds."""
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    before = set(live_pids_of({NOBODY}))
    scratch = Path(tempfile.mkdtemp(prefix="genprm-bwrap-check-"))
    try:
        os.chmod(scratch, 0o755)
        (scratch / "check.py").write_text(CHECKER)
        (scratch / "check.py").chmod(0o644)
        command = [
            *setpriv, "env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={REPO}",
            "/usr/bin/python3", str(scratch / "check.py"), SECRET, str(REPO),
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd="/", check=False
        )
    finally:
        shutil.rmtree(scratch)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout)
    isolation = report["isolation"]
    assert isolation["bwrap"] is True and isolation["uid"] is None
    assert isolation["private_network"] and isolation["pid_namespaces"]
    assert isolation["private_scratch"]
    assert any("dedicated uid" in item for item in isolation["missing"]), isolation
    assert report["import"] == ["ok", None, "wave\n"]
    assert report["passwd"][:2] == report["repo"][:2] == ["error", "FileNotFoundError"]
    assert report["environ"][0] == "ok" and SECRET not in report["environ"][2]
    assert report["sleep"][0] == "timeout"
    assert report["fork_bomb"][0] in ("error", "timeout")
    assert report["after"] == ["ok", None, "1\n"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "dedicated uid (not root)" in warnings[0], done.stderr
    assert wait_for(lambda: set(live_pids_of({NOBODY})) <= before), live_pids_of({NOBODY})
