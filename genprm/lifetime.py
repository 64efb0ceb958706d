"""No process outlives its command: whatever a genprm command starts (vLLM engine cores and
workers, vLLM servers, sandbox workers, a local Ray cluster) is gone within seconds of the
command's end, however it ends (SIGKILL, an OOM kill or a scheduler's time limit included).

:func:`guard` starts a *watchdog* for the calling process: a small stdlib-only program in a
session of its own (so a terminal's Ctrl-C or a process-group kill aimed at the command leaves it
running) that follows the command's process tree while it runs and, once the command is gone,
SIGKILLs every process it saw below it, the descendants of those, and any process that carries
the command's tag in its environment (what a process forked away from the tree still inherits;
vLLM rewrites its process titles, which hides the environment, so the tree is followed too).
Every process checked is matched by pid *and* start time, so a reused pid is never killed.

:func:`command` wraps a command's ``main``: the watchdog, then SIGINT, SIGTERM and SIGHUP (unless
``nohup`` ignores it) stop the command like Ctrl-C, even where SIGINT was inherited ignored (a
background job). A stop is also written to the watchdog by the C-level signal handler
(``signal.set_wakeup_fd``), so a command whose cleanup hangs, or whose main thread is stuck in
native code, is SIGKILLed :data:`STOP_GRACE_S` seconds after the signal, and its tree with it.

Run as a script (``python -I -S lifetime.py PID START TOKEN``) this file is the watchdog.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

TAG = "GENPRM_LIFETIME"
# How often the watchdog follows the tree: a process that is born and orphaned within this
# interval is found by its tag alone.
SCAN_INTERVAL_S = 0.25
# From a stop signal to the SIGKILL of a command that has not exited.
STOP_GRACE_S = 6.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_guarded: tuple[int, subprocess.Popen] | None = None  # (pid, watchdog) of this process


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (clock ticks since boot); None for no such process."""
    table = _stat(pid)
    return None if table is None else table[2]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def processes() -> dict[int, tuple[str, int, int]]:
    """Every live process (zombies left out: they are dead): pid -> (state, ppid, start)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[0] not in "ZX":
            table[int(entry)] = stat
    return table


def below(roots: set[int], table: dict[int, tuple[str, int, int]]) -> dict[int, int]:
    """The processes of ``table`` below ``roots``: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found[child] = table[child][2]
                stack.append(child)
    return found


def _tagged(token: bytes, pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return False
    for entry in environ.split(b"\0"):
        if entry.startswith(TAG.encode() + b"="):
            return token in entry.split(b"=", 1)[1].split(b",")
    return False


def guard() -> None:
    """Start this process's watchdog, once per process (a forked child that calls it gets one
    of its own); from any thread. Where no watchdog can start, it says so and returns."""
    global _guarded
    if _guarded is not None and _guarded[0] == os.getpid():
        return
    pid, start = os.getpid(), _start_time(os.getpid())
    if start is None:  # no /proc: nothing to follow
        return
    token = f"{pid}.{start}"
    tags = [t for t in os.environ.get(TAG, "").split(",") if t]
    os.environ[TAG] = ",".join([*tags, token])
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(pid), str(start), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as error:
        print(f"genprm: no watchdog for pid {pid} ({error})", file=sys.stderr)
        return
    os.set_blocking(watchdog.stdin.fileno(), False)
    _guarded = (pid, watchdog)


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog (a child that lives as long as this process does),
    None before :func:`guard`."""
    if _guarded is None or _guarded[0] != os.getpid():
        return None
    return _guarded[1].pid


def stop_on_signals() -> dict:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (SIGHUP not where it
    is ignored, as ``nohup`` does; SIGINT even where it is); a second one exits at once. With a
    watchdog (:func:`guard`), each also starts its :data:`STOP_GRACE_S` deadline. Returns what
    :func:`restore_signals` puts back."""
    stops = []

    def stop(signum, frame):
        stops.append(signum)
        if len(stops) > 1:
            os._exit(128 + signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for signum in STOP_SIGNALS:
        if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, stop)
    if _guarded is not None and _guarded[0] == os.getpid():
        previous["wakeup"] = signal.set_wakeup_fd(
            _guarded[1].stdin.fileno(), warn_on_full_buffer=False
        )
    return previous


def restore_signals(previous: dict) -> None:
    """Undo :func:`stop_on_signals` (a command run in-process, from tests or a notebook)."""
    wakeup = previous.pop("wakeup", None)
    if wakeup is not None:
        signal.set_wakeup_fd(wakeup)
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _forget_wakeup_fd() -> None:
    # A forked child (vLLM's engine core may be one) must not tell our watchdog of the signals
    # it gets: vLLM stops its engine core with SIGTERM.
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread
        pass


os.register_at_fork(after_in_child=_forget_wakeup_fd)


def command(main):
    """Decorate a command's ``main(argv) -> int``: :func:`guard`, :func:`stop_on_signals`, and
    a stop becomes one line on stderr and exit status 130 (finished work is kept by every
    resumable command: the same command line resumes)."""

    def run(argv: list[str] | None = None) -> int:
        guard()
        previous = stop_on_signals()
        try:
            return main(argv)
        except KeyboardInterrupt as stop:
            name = str(stop) or "SIGINT"
            print(f"\n{os.path.basename(sys.argv[0])}: stopped ({name})", file=sys.stderr)
            return 130
        finally:
            restore_signals(previous)

    run.__doc__, run.__name__, run.__wrapped__ = main.__doc__, main.__name__, main
    return run


# ----------------------------------------------------------------------------- the watchdog


def _watch(parent: int, start: int, token: bytes) -> None:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    try:
        exited = os.pidfd_open(parent)
    except (AttributeError, OSError):
        exited = None
    control: int | None = 0
    seen: dict[int, int] = {}
    deadline = None
    while _start_time(parent) == start:
        waits = [fd for fd in (exited, control) if fd is not None]
        ready = select.select(waits, [], [], SCAN_INTERVAL_S)[0] if waits else ()
        if exited is not None and exited in ready:
            break
        if control in ready:
            data = os.read(control, 64)
            if not data:
                control = None  # the command closed it: only the pidfd and polling are left
            elif deadline is None and set(data) & {int(s) for s in STOP_SIGNALS}:
                deadline = time.monotonic() + STOP_GRACE_S
        if os.getppid() != parent:  # reparented: the command is gone (no pidfd support)
            break
        if deadline is not None and time.monotonic() > deadline:
            if _start_time(parent) == start:
                os.kill(parent, signal.SIGKILL)
        table = processes()
        seen = {pid: t for pid, t in {**seen, **below({parent}, table)}.items() if pid in table}
    reap(seen, token)


def reap(seen: dict[int, int], token: bytes) -> None:
    """SIGKILL what was seen below the command (still the same processes), what is below
    those now, and whatever carries the command's tag; until nothing is left."""
    me = os.getpid()
    for _ in range(200):
        table = processes()
        victims = {pid for pid, t in seen.items() if table.get(pid, (0, 0, None))[2] == t}
        victims |= {pid for pid in table if pid not in victims and _tagged(token, pid)}
        victims |= set(below(victims, table))
        victims.discard(me)
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        seen.update({pid: table[pid][2] for pid in victims})
        time.sleep(0.05)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode())
