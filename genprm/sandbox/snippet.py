"""One snippet's process, forked from the zygote: isolated while it waits for its request, then
confined further and run.

Before the request (off the critical path): its own session, memory cgroup, IPC namespace, mount
namespace (private scratch, its own /proc), scrubbed environment. After it: rlimits, the snippet
uid, no capabilities, no setuid bits, no sockets where there is no network namespace; then the
prelude is replayed silently, the code runs, and one report goes to fd 3. If any isolation step
fails the snippet does not run: the report says why.

A request with ``"session": true`` makes the process a session (``Sandbox.session()``): it keeps
its namespace and serves one block per request line, each reported as one line on fd 3, until
its request pipe closes. The worker pauses it (SIGSTOP) between blocks, and interrupts a block
at its deadline with SIGALRM, as upstream's executor did (``signal.alarm``), so that the session
keeps what the block did before.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import io
import json
import os
import resource
import signal
import sys
from dataclasses import dataclass

from . import cgroups, isolation, scratch, seccomp

EXTRA_PROCESSES = 128  # threads count too: room for a snippet's own threads and children
# Without a memory cgroup only each process's address space is capped: fewer processes then.
EXTRA_PROCESSES_WITHOUT_CGROUP = 8
MAX_FILE_BYTES = 16 << 20
MAX_OPEN_FILES = 64
MAX_MESSAGE = 10_000  # characters of an exception's message in the report
MAX_NAME = 200  # characters of an exception's type name
SNIPPET_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
# The process names ps shows: prepared and waiting for its request, then running it (a session:
# for as long as it lives).
WAITING_NAME, RUNNING_NAME, SESSION_NAME = "genprm-ready", "genprm-snippet", "genprm-session"
STATUS_FD, REQUEST_FD = 3, 4  # after stdin, stdout and stderr, in this order
# A session's CPU time in all (RLIMIT_CPU's hard limit): each block also gets the one-shot soft
# limit on top of what the session used before it, which the block itself could raise.
SESSION_CPU_S = 3600
# What a session writes to fd 3 once it has replayed the blocks of a rebuild: the block's own
# deadline starts then.
REPLAYED = b'{"replayed": true}\n'


@dataclass(frozen=True)
class SnippetSettings:
    """What the worker found it can give each snippet (see ``WarmWorker``)."""

    owner: int  # owner of the private scratch: the snippet uid, else the host user
    uid: int | None  # the reserved snippet uid (root), None otherwise
    address_space: int  # RLIMIT_AS: the warm image plus memory_mb
    cgroups: tuple[str, ...] | None  # the worker's two memory cgroups
    ipc_namespace: bool
    private_scratch: bool
    own_proc: bool
    scratch_folders: tuple[str, ...]
    keep: tuple[str, ...]
    private_network: bool
    syscall_filter: bool
    sessions: int  # live sessions the worker may hold: processes of its uid


def run_snippet(settings: SnippetSettings, slot: int, workdir: str, fds: list[int]) -> None:
    """In the freshly forked process (the init of a new PID namespace where possible); ``fds``
    are its ends of the stdout, stderr, status and request pipes. Never returns."""
    os.setsid()
    isolation.set_name(WAITING_NAME)
    signal.set_wakeup_fd(-1)  # the zygote's SIGCHLD wake-up is not the snippet's
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    # Above every target first, so that no dup2 overwrites a descriptor still to be moved.
    sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, REQUEST_FD + 1) for fd in (null, *fds)]
    for target, fd in enumerate(sources):
        os.dup2(fd, target)
    os.closerange(REQUEST_FD + 1, os.sysconf("SC_OPEN_MAX"))
    try:
        _prepare(settings, slot, workdir)
        requests = os.fdopen(REQUEST_FD, "rb")
        request = json.loads(requests.readline())
        session = request.get("session") is True
        isolation.set_name(SESSION_NAME if session else RUNNING_NAME)
        _confine(settings, float(request["timeout"]), session)
    except (OSError, ValueError) as error:
        os.write(STATUS_FD, json.dumps({"isolation_failed": str(error)}).encode())
        os._exit(1)
    if session:
        _serve_session(requests, request)
    requests.close()
    _execute(request["prelude"], request["code"])


def _prepare(settings: SnippetSettings, slot: int, workdir: str) -> None:
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    if settings.cgroups:
        cgroups.join(settings.cgroups[slot])
    if settings.ipc_namespace:
        isolation.unshare(isolation.CLONE_NEWIPC)
    if settings.private_scratch:
        scratch.private_mounts(
            settings.owner, settings.scratch_folders, settings.keep, settings.own_proc
        )
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(SNIPPET_ENV, HOME=workdir, TMPDIR=workdir)
    if settings.cgroups:  # each live session of the worker is a process of the same uid
        processes = EXTRA_PROCESSES + settings.sessions
    else:
        processes = EXTRA_PROCESSES_WITHOUT_CGROUP
    if settings.uid is None:  # RLIMIT_NPROC counts every process of the uid
        processes += isolation.processes_of(settings.owner)
    isolation.set_limits(
        address_space=settings.address_space,
        processes=processes,
        file_bytes=MAX_FILE_BYTES,
        files=MAX_OPEN_FILES,
    )


def _confine(settings: SnippetSettings, timeout: float, session: bool) -> None:
    cpu_seconds = _cpu_seconds(timeout)
    resource.setrlimit(
        resource.RLIMIT_CPU, (cpu_seconds, SESSION_CPU_S if session else cpu_seconds)
    )
    if settings.uid is not None:
        isolation.drop_to_uid(settings.uid)
    # Again after the uid change, which clears it: the snippet dies with the zygote.
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    isolation.drop_capabilities()
    if settings.syscall_filter:
        seccomp.confine_syscalls()
    if not settings.private_network:
        isolation.refuse_sockets()


def _cpu_seconds(timeout: float) -> int:
    """RLIMIT_CPU for one snippet: a backstop behind the worker's wall-clock deadline."""
    return int(timeout) + 2


def _execute(prelude: list[str], code: str) -> None:
    """Replay the prelude silently, run the snippet, report on fd 3, and exit."""
    namespace = _namespace()
    runner = os.getpid()  # processes the snippet forks end here too, but only the runner reports
    _replay(namespace, prelude)
    report = _run(namespace, code)
    if os.getpid() == runner:
        with contextlib.suppress(BaseException):
            os.write(STATUS_FD, json.dumps(report).encode())
    os._exit(0)


class _Deadline(BaseException):
    """Raised in a session's block at its deadline (not an Exception: ``except Exception`` in
    the block does not keep it running)."""


def _serve_session(requests, request: dict) -> None:
    """One block per request line, in one namespace, each reported as one line on fd 3; the
    blocks of a rebuild (``replay``) are replayed silently first. Exits when the pipe closes."""
    namespace = _namespace()
    runner = os.getpid()
    streams = sys.stdout, sys.stderr
    running = [False]

    def interrupt(*_) -> None:  # a deadline that comes after the block ended is too late
        if running[0]:
            running[0] = False
            raise _Deadline

    signal.signal(signal.SIGALRM, interrupt)
    while True:
        sys.stdout, sys.stderr = streams  # as upstream's executor redirected them per block
        if request.get("replay"):
            _replay(namespace, request["replay"])
            _end_if_forked(runner)
            os.write(STATUS_FD, REPLAYED)
        running[0] = True
        report = _run(namespace, request["code"])
        running[0] = False
        _end_if_forked(runner)
        with contextlib.suppress(BaseException):
            os.write(STATUS_FD, json.dumps(report).encode() + b"\n")
        line = requests.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        _reap()
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + _cpu_seconds(float(request["timeout"]))
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, SESSION_CPU_S), SESSION_CPU_S))


def _end_if_forked(runner: int) -> None:
    """A process a block forked ran the rest of the block: it ends there."""
    if os.getpid() != runner:
        os._exit(0)


def _namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": builtins}


def _replay(namespace: dict, blocks) -> None:
    """Run earlier blocks of the path silently: their output and errors are not shown."""
    for block in blocks:
        with contextlib.suppress(BaseException), contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, "<string>", "exec"), namespace)  # noqa: S102


def _run(namespace: dict, code: str) -> dict:
    """Run one block in ``namespace``: its report (``{"ok": true}`` or the error)."""
    report: dict = {"ok": True}
    try:
        exec(compile(code, "<string>", "exec"), namespace)  # noqa: S102
    except _Deadline:
        report = {"timeout": True}
    except SystemExit as stop:
        if stop.code not in (None, 0):
            report = {"type": "SystemExit", "message": capped_text(stop.code, MAX_MESSAGE)}
    except BaseException as error:  # noqa: BLE001 - every failure is the snippet's result
        report = {
            "type": capped_text(type(error).__name__, MAX_NAME),
            "message": capped_text(error, MAX_MESSAGE),
            "memory": isinstance(error, MemoryError),
        }
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    return report


def _reap() -> None:
    """Collect the session's dead children (the worker killed what a block left): as the init
    of its PID namespace it inherits every orphan, and zombies count against RLIMIT_NPROC."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def capped_text(value: object, limit: int) -> str:
    """``str(value)``, at most ``limit`` characters, always valid UTF-8 (lone surrogates are
    replaced): for the runner's report, and for the worker reading a report the snippet may
    have forged."""
    try:
        text = value if isinstance(value, str) else str(value)
    except BaseException:  # noqa: BLE001 - a __str__ that raises
        return "<unprintable>"
    return text[:limit].encode("utf-8", "replace").decode("utf-8")
