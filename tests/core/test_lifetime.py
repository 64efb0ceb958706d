"""No process outlives its command (genprm.lifetime): a command's tree, a daemon forked away
from it, and a command whose cleanup hangs, under SIGKILL, SIGTERM and SIGINT, started
normally or as a background job (SIGINT inherited ignored). The real commands with vLLM engines
are in tests/generation_env/test_lifetime_commands.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from genprm import lifetime
from tests.support.paths import REPO
from tests.support.processes import ProcessTree, command_line, wait_for

GONE_WITHIN_S = 10.0
DAEMON = f"genprm-test-daemon-{uuid.uuid4().hex}"

# A command that starts a tree (a shell with two sleeps), a daemon (setsid after a double fork,
# renamed, so only its tag ties it to the command), prints its pid, then waits; with "hang" its
# cleanup never ends.
COMMAND = """
import os, subprocess, sys, time
from genprm import lifetime

@lifetime.command
def main(argv):
    subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])
    daemon = f"exec -a {os.environ['DAEMON_NAME']} sleep 300"
    subprocess.Popen(["bash", "-c", f"setsid bash -c '{daemon}' &"])
    print("up", flush=True)
    try:
        time.sleep(600)
    finally:
        while argv == ["hang"]:
            try:
                time.sleep(600)
            except KeyboardInterrupt:
                pass
    return 0

sys.exit(main(sys.argv[1:]))
"""


def named(name: str) -> list[int]:
    """Live processes whose command line starts with ``name`` (the daemon's: outside the tree)."""
    return [pid for pid in lifetime.processes() if (command_line(pid) or "").startswith(name)]


def start(*argv: str, sigint_ignored: bool = False) -> tuple[subprocess.Popen, ProcessTree]:
    def ignore_sigint():  # what a shell does for `command &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [sys.executable, "-c", COMMAND, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DAEMON_NAME": DAEMON},
        preexec_fn=ignore_sigint if sigint_ignored else None,
    )
    tree = ProcessTree(process.pid)
    assert process.stdout.readline() == "up\n", process.stderr.read()
    assert wait_for(lambda: len(tree.alive("sleep")) == 2 and named(DAEMON))
    return process, tree


def stopped(process: subprocess.Popen, tree: ProcessTree, signum: int) -> None:
    """Send ``signum``: the command and everything it started are gone within 10 s."""
    process.send_signal(signum)
    try:
        process.wait(GONE_WITHIN_S)
    finally:
        process.kill()
    assert wait_for(lambda: not tree.alive() and not named(DAEMON), GONE_WITHIN_S), tree.alive()
    tree.stop()


def test_sigkill_leaves_nothing_it_started_not_even_a_daemon():
    process, tree = start()
    assert any("lifetime.py" in command for command in tree.alive())  # its watchdog
    stopped(process, tree, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_a_stop_signal_ends_the_command_and_its_tree(signum, background):
    process, tree = start(sigint_ignored=background)
    stopped(process, tree, signum)
    assert process.returncode == 130
    assert f"stopped ({signal.Signals(signum).name})" in process.stderr.read()


def test_a_command_whose_cleanup_hangs_is_killed_after_the_grace(tmp_path):
    process, tree = start("hang")
    process.send_signal(signal.SIGTERM)
    time.sleep(lifetime.STOP_GRACE_S / 2)
    assert process.poll() is None  # still cleaning up: not killed before the grace
    process.wait(GONE_WITHIN_S)
    assert process.returncode == -signal.SIGKILL
    assert wait_for(lambda: not tree.alive() and not named(DAEMON), GONE_WITHIN_S), tree.alive()
    tree.stop()


def test_a_normal_exit_leaves_nothing_either():
    program = (
        "import subprocess, sys\nfrom genprm import lifetime\nlifetime.guard()\n"
        "subprocess.Popen(['sleep', '300'])\nprint('up', flush=True)\nsys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    tree = ProcessTree(process.pid)
    assert process.stdout.readline() == "up\n"
    assert wait_for(lambda: tree.alive("sleep"))
    process.stdin.close()  # the program ends
    assert process.wait(GONE_WITHIN_S) == 0
    assert wait_for(lambda: not tree.alive(), GONE_WITHIN_S), tree.alive()
    tree.stop()


def test_a_reused_pid_is_not_killed():
    """Only a process with the pid *and* start time seen is killed."""
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        lifetime.reap({bystander.pid: 1}, b"no-such-token")  # same pid, another start time
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_an_in_process_command_gives_the_signal_handlers_back():
    before = {s: signal.getsignal(s) for s in lifetime.STOP_SIGNALS}
    assert lifetime.command(lambda argv: 7)([]) == 7
    assert {s: signal.getsignal(s) for s in lifetime.STOP_SIGNALS} == before
