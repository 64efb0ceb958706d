"""The warm sandbox worker: ``python -m genprm.sandbox.worker CONFIG_JSON``, started by
:class:`genprm.sandbox.Sandbox`, one per slot.

It imports and exercises sympy, numpy and math-verify once, isolates itself (private network
namespace, init of its own PID namespace), finds out what isolation this host allows each
snippet, and forks the zygote (:mod:`genprm.sandbox.zygote`), from which every snippet process
is forked, prepared ahead of its request. Then it serves one JSON request per line on stdin:
hands the request to the prepared process, collects its output under a wall-clock deadline and
output caps, makes sure nothing of it is left, and answers one JSON line on stdout. EOF on stdin
(the host went away) ends it, and with it the zygote and any snippet.

It also holds the host's live sessions (``Sandbox.session()``): each is a snippet process of its
own, in a memory cgroup of its own, that keeps its namespace between blocks. Between blocks the
session is paused (SIGSTOP: no thread of it runs) and every process its block started is
killed, so that nothing of a block outlives it but the namespace. A block past its deadline is
interrupted; one that does not stop then, overflows its output or crashes the process ends the
session, which the host then starts again from the blocks that succeeded (``replay``).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass

from . import cgroups, isolation, scratch, seccomp
from .snippet import (
    EXTRA_PROCESSES_WITHOUT_CGROUP,
    MAX_MESSAGE,
    MAX_NAME,
    REPLAYED,
    SnippetSettings,
    capped_text,
)
from .waits import poll_ms
from .zygote import DESCRIPTORS, MAX_DATAGRAM, Zygote

# Imported before any snippet runs. As root the snippet runs under a uid that may not be able
# to read the Python installation (e.g. under /root), so what it imports must already be loaded.
WARM_MODULES = (
    "math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools", "operator",
    "collections", "heapq", "bisect", "array", "struct", "copy", "re", "string", "textwrap",
    "pprint", "json", "time", "datetime", "calendar", "statistics", "random", "typing",
    "dataclasses", "socket", "encodings.idna", "numpy", "sympy", "sympy.abc", "math_verify",
)  # fmt: skip
# What a snippet may write to its status descriptor (fd 3): the runner's report is far smaller.
MAX_REPORT = 1 << 16
# How long a session that reported may take to stop (every thread of it), and to lose the
# processes its block left, before it is ended instead.
PAUSE_TIMEOUT_S = 2.0
# A session's block past its deadline is interrupted (SIGALRM, as upstream's executor did), and
# killed, with the session, if it has not reported this long after.
INTERRUPT_GRACE_S = 1.0
SNIPPET_SLOTS = range(len(cgroups.SLOTS))  # the memory cgroups of one-shot snippets


class WorkerStartError(RuntimeError):
    """This host cannot give snippets an isolation the worker insists on."""


def warm_up() -> list[str]:
    """Import and exercise what snippets use, so every fork shares it; returns what is missing.

    Importing sympy is not enough: its lazy set-up runs on the first simplify/solve."""
    missing = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if "sympy" not in missing:
        import sympy

        x = sympy.Symbol("x")
        sympy.simplify("x**2 - 1")
        sympy.solve(x**2 - 4, x)
        sympy.factor(x**2 - 1)
        sympy.N(sympy.sqrt(8) + sympy.Rational(1, 3))
        sympy.integrate(x**2, x)
        sympy.sympify("sin(x)**2 + cos(x)**2").simplify()
    if "numpy" not in missing:
        import numpy

        numpy.linalg.solve(numpy.eye(2), numpy.ones(2))
    if "math_verify" not in missing:
        from math_verify import parse, verify

        verify(parse("$\\frac{1}{2}$"), parse("$0.5$"))
    return missing


@dataclass
class _Prepared:
    """A snippet process the zygote forked, waiting for its request."""

    pid: int
    workdir: str
    slot: int
    outputs: list[int]  # read ends of its stdout, stderr and status pipes
    request: int  # write end of its request pipe
    pidfd: int
    proc_pid: int | None = None  # a session's pid as /proc names it


class WarmWorker:
    """The worker process itself (the host side is ``pool._WorkerHandle``). ``config["uid"]``
    is the snippet uid the host reserved for this worker (``uids.UidRange``), None when the
    host is not root; ``config["cgroups"]`` its two memory cgroups (``cgroups.WorkerCgroups``)
    or None; ``config["scratch"]`` the world-writable folders and unsearched network mounts
    (``scratch.world_writable()``), None to search here (inside bubblewrap);
    ``config["sessions"]`` how many live sessions the host may keep on it (the cgroups list
    holds one for each, after the two snippet slots)."""

    def __init__(self, config: dict):
        self.memory_mb = int(config["memory_mb"])
        self.output_limit = int(config["output_limit"])
        sessions = int(config["sessions"])
        self.bwrap = bool(config["bwrap"])
        if self.bwrap:  # die with bwrap, our parent, as we do with the host (EOF on stdin)
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        self.uid = config["uid"]
        self.missing: list[str] = []
        try:
            isolation.enter_private_network()
            self.private_network = True
        except OSError as error:
            self.private_network = False
            self.missing.append(f"network namespace ({error.strerror}): sockets refused instead")
        if not isolation.works_in_child(isolation.drop_capabilities):
            raise WorkerStartError(
                "cannot drop capabilities (capset or PR_SET_NO_NEW_PRIVS refused):"
                " snippets would keep them"
            )
        self.pid_namespaces = _become_namespace_init()
        own_pid_namespace = None
        if self.pid_namespaces:
            own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY)
            self.pid_namespaces = isolation.works_in_child(
                lambda: _fresh_pid_namespace(own_pid_namespace)
            )
        if not self.pid_namespaces:
            own_pid_namespace = None
            self.missing.append("PID namespace: leftover processes are found by process tree")
        owner = self.uid if self.uid is not None else os.getuid()
        found, unsearched = config.get("scratch") or scratch.world_writable()
        if unsearched:
            self.missing.append(
                "not searched for world-writable folders (network file systems): "
                + ", ".join(unsearched)
            )
        folders = scratch.scratch_folders(found)
        keep = scratch.shadowed([*sys.path, sys.prefix, sys.base_prefix], folders)
        mounts = lambda own_proc: scratch.private_mounts(owner, folders, keep, own_proc)  # noqa: E731
        self.private_scratch = isolation.works_in_child(lambda: mounts(False))
        if not self.private_scratch:
            self.missing.append(
                "mount namespace: files written to world-writable folders outlive the snippet"
            )
        # Without a PID namespace of its own a snippet's /proc still hides other users'
        # processes: all of the host's, when it runs under its own uid.
        own_proc = False
        if self.private_scratch:
            if own_pid_namespace is not None:
                _fresh_pid_namespace(own_pid_namespace)
            own_proc = isolation.works_in_child(lambda: mounts(True))
            if own_pid_namespace is not None:
                isolation.setns(own_pid_namespace, isolation.CLONE_NEWPID)
        if not own_proc:
            self.missing.append("own /proc: snippets can list the host's processes")
        elif not self.pid_namespaces and self.uid is None:
            self.missing.append("own /proc: snippets can list the host user's processes")
        ipc = isolation.works_in_child(lambda: isolation.unshare(isolation.CLONE_NEWIPC))
        if not ipc:
            self.missing.append("IPC namespace: SysV IPC and POSIX queues are shared")
        self.memory_cgroup = _usable_cgroups(config.get("cgroups"))
        if not self.memory_cgroup:
            self.missing.append(
                "memory cgroup: memory is capped per process only, and at most"
                f" {EXTRA_PROCESSES_WITHOUT_CGROUP} more processes"
            )
        syscall_filter = isolation.works_in_child(seccomp.confine_syscalls)
        if not syscall_filter:
            self.missing.append(
                "seccomp: snippets can set setuid bits on their private files and use kernel"
                " keys, new namespaces, Linux AIO, vsock and uevent sockets"
            )
        if self.uid is None:
            self.missing.append("dedicated uid (not root): snippets run as the host user")
        # A session's leftovers are found below it, the init of its PID namespace.
        children = os.path.exists("/proc/thread-self/children")
        self.live_sessions = self.pid_namespaces and children
        if not self.live_sessions:
            self.missing.append(
                "live sessions (they need PID namespaces and /proc children lists): a session"
                " replays the blocks that succeeded before each block"
            )
        self.missing += [f"module {name} (not installed)" for name in warm_up()]
        # Keep the collector away from the warm objects: a child's collection would write to
        # (and so copy) every page holding them.
        gc.freeze()
        self.settings = SnippetSettings(
            owner=owner,
            uid=self.uid,
            address_space=_address_space() + (self.memory_mb << 20),
            cgroups=tuple(config["cgroups"]) if self.memory_cgroup else None,
            ipc_namespace=ipc,
            private_scratch=self.private_scratch,
            own_proc=own_proc,
            scratch_folders=tuple(folders),
            keep=tuple(keep),
            private_network=self.private_network,
            syscall_filter=syscall_filter,
            sessions=sessions,
        )
        self._channel, self.zygote_pid = _start_zygote(self.settings, own_pid_namespace)
        self._channel_poller = select.poll()
        self._channel_poller.register(self._channel, select.POLLIN)
        self._prepared: collections.deque[_Prepared] = collections.deque()
        self._slots_asked: collections.deque[int] = collections.deque()  # in the zygote's order
        self._exits: dict[int, int] = {}
        self._stops: set[int] = set()
        self._next_slot = 0
        self._sessions: dict[str, _Prepared] = {}
        self._session_slots = list(range(len(cgroups.SLOTS), len(cgroups.SLOTS) + sessions))
        self._stdin = b""
        self._prepare()

    def facts(self) -> dict:
        return {
            "ready": True,
            "uid": self.uid,
            "private_network": self.private_network,
            "pid_namespaces": self.pid_namespaces,
            "private_scratch": self.private_scratch,
            "memory_cgroup": self.memory_cgroup,
            "bwrap": self.bwrap,
            "live_sessions": self.live_sessions,
            "missing": self.missing,
        }

    def requests(self):
        while True:
            while b"\n" not in self._stdin:
                chunk = os.read(0, 1 << 20)
                if not chunk:
                    return
                self._stdin += chunk
            line, self._stdin = self._stdin.split(b"\n", 1)
            yield json.loads(line)

    def run(self, request: dict) -> dict:
        """Serve one request: end the sessions in ``close``, then run the snippet (``code``,
        ``prelude``) or, with ``session``, the block in that session."""
        for name in request.get("close", ()):
            self._end_session(name)
        if "session" in request:
            return self._run_in_session(request)
        if "code" not in request:
            return {"closed": True}
        child = self._next_prepared(SNIPPET_SLOTS)
        started = time.monotonic()
        if self.pid_namespaces:
            # Nothing of this snippet can outlive it, so the next one gets ready alongside.
            self._prepare()
        cgroup = self.settings.cgroups[child.slot] if self.settings.cgroups else None
        oom_kills = cgroups.oom_kills(cgroup) if cgroup else 0
        try:
            _deliver(child.request, json.dumps(request).encode())
            output, status, _ = self._collect(child, started, float(request["timeout"]))
            exit_code = os.waitstatus_to_exitcode(self._exit_status(child.pid))
        finally:
            for fd in [*child.outputs, child.pidfd]:
                os.close(fd)
            if not self.pid_namespaces:
                self._sweep()
            if not self.settings.private_scratch:
                shutil.rmtree(child.workdir, ignore_errors=True)
        result = self._result(output, status, exit_code)
        # However it ended, a tree that went over its memory limit is a memory result.
        if cgroup and cgroups.oom_kills(cgroup) > oom_kills:
            self._memory_result(result)
        if not self.pid_namespaces:
            self._prepare()
        result["duration_s"] = time.monotonic() - started
        return result

    def _run_in_session(self, request: dict) -> dict:
        """One block in the session named ``request["session"]``, with ``"alive"``: whether
        the session lives on. A session this worker does not hold (new, ended, or dead while
        it waited) is started, replaying ``request["replay"]`` first; without a replay (the
        host thought it alive) the answer is ``{"missing": true}`` and nothing runs."""
        name, timeout = request["session"], float(request["timeout"])
        block = {"code": request["code"], "timeout": timeout}
        child = self._sessions.get(name)
        if child is not None and not self._resume(child):
            self._end_session(name)
            child = None
        if child is None:
            if "replay" not in request:
                return {"missing": True}
            child = self._start_session(name)
            block.update(session=True, replay=request["replay"])
        cgroup = self.settings.cgroups[child.slot] if self.settings.cgroups else None
        oom_kills = cgroups.oom_kills(cgroup) if cgroup else 0
        started = time.monotonic()
        with contextlib.suppress(OSError):  # a session that died as its block came: no report
            _send_line(child.request, json.dumps(block).encode(), started + timeout)
        replayed = len(block.get("replay", ()))
        output, status, reported = self._collect(child, started, timeout, replayed)
        alive = reported and self._pause(child) and self._sweep_session(child)
        if alive:
            output.drain()  # what the block wrote just before it reported
            exit_code = 0
        else:
            exit_code = os.waitstatus_to_exitcode(self._end_session(name))
        result = self._result(output, status or output.over(), exit_code)
        if cgroup and cgroups.oom_kills(cgroup) > oom_kills:
            self._memory_result(result)
        result["alive"] = alive
        result["duration_s"] = time.monotonic() - started
        return result

    def _start_session(self, name: str) -> _Prepared:
        """A fresh snippet process for the session, in a memory cgroup of its own."""
        slot = self._session_slots.pop()
        self._prepare(slot)
        child = self._next_prepared({slot})
        child.proc_pid = isolation.proc_pid(child.pidfd)
        os.set_blocking(child.request, False)
        self._sessions[name] = child
        return child

    def _resume(self, child: _Prepared) -> bool:
        """Let a paused session run again; False when it died while it waited."""
        while self._receive(0):  # exits the zygote has reported meanwhile
            pass
        if child.pid in self._exits:
            return False
        try:
            signal.pidfd_send_signal(child.pidfd, signal.SIGCONT)
        except ProcessLookupError:
            return False
        return True

    def _pause(self, child: _Prepared) -> bool:
        """Stop every thread of a session between its blocks; False when it died instead or
        would not stop in time."""
        try:
            signal.pidfd_send_signal(child.pidfd, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while child.pid not in self._stops:
            if child.pid in self._exits or not self._receive(deadline - time.monotonic()):
                return False
        self._stops.discard(child.pid)
        return True

    def _sweep_session(self, child: _Prepared) -> bool:
        """Kill every process the paused session's block left (all of them are below it, the
        init of its PID namespace); False when some would not go in time."""
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while leftovers := isolation.live_tree(child.proc_pid):
            if time.monotonic() > deadline:
                return False
            for pid in leftovers:
                isolation.kill_proc(pid)
        return True

    def _end_session(self, name: str) -> int | None:
        """Kill a session (its PID namespace goes with it) and wait until it is gone, so that
        its memory cgroup is empty for the next one: its wait status, None for a name this
        worker does not hold."""
        child = self._sessions.pop(name, None)
        if child is None:
            return None
        _kill(child)
        status = self._exit_status(child.pid)
        for fd in [*child.outputs, child.request, child.pidfd]:
            os.close(fd)
        if not self.settings.private_scratch:
            shutil.rmtree(child.workdir, ignore_errors=True)
        self._session_slots.append(child.slot)
        return status

    def _prepare(self, slot: int | None = None) -> None:
        """Ask the zygote for the next snippet process, in the memory cgroup the running one
        does not use (or, for a session, in its own ``slot``)."""
        if slot is None:
            slot, self._next_slot = self._next_slot, 1 - self._next_slot
        self._channel.send(json.dumps({"prepare": slot}).encode())
        self._slots_asked.append(slot)

    def _next_prepared(self, slots) -> _Prepared:
        """The first prepared process in one of ``slots``."""
        while True:
            for prepared in self._prepared:
                if prepared.slot in slots:
                    self._prepared.remove(prepared)
                    return prepared
            self._receive()

    def _exit_status(self, pid: int) -> int:
        while pid not in self._exits:
            self._receive()
        self._stops.discard(pid)
        return self._exits.pop(pid)

    def _receive(self, timeout: float | None = None) -> bool:
        """Handle the zygote's next message; False when none came within ``timeout``."""
        if timeout is not None and not self._channel_poller.poll(max(timeout, 0) * 1000):
            return False
        message, fds, _, _ = socket.recv_fds(self._channel, MAX_DATAGRAM, DESCRIPTORS)
        if not message:
            raise RuntimeError("the zygote is gone")
        parsed = json.loads(message)
        if "ready" in parsed:
            slot = self._slots_asked.popleft()
            *outputs, request, pidfd = fds
            prepared = _Prepared(parsed["ready"], parsed["workdir"], slot, outputs, request, pidfd)
            self._prepared.append(prepared)
        elif "stopped" in parsed:
            self._stops.add(parsed["stopped"])
        else:
            self._exits[parsed["exited"]] = parsed["status"]
        return True

    def _collect(
        self, child: _Prepared, started: float, timeout: float, replayed: int = 0
    ) -> tuple[_Output, str | None, bool]:
        """Read what ``child`` writes until it ends, its deadline passes or an output cap is
        hit: the output, the status that cut it short (``timeout``, ``output_limit``,
        ``report_limit``) or None, and whether it is a session whose block reported (it lives
        on; anything else is killed). A session that is rebuilt first replays ``replayed``
        blocks, with ``timeout`` for each; the block's own ``timeout`` starts after them, and
        at its end the block is interrupted, which it reports as a time-out."""
        output = _Output(child.outputs, self.output_limit)
        pidfd, session = child.pidfd, child.proc_pid is not None
        deadline, replaying = started + timeout * max(replayed, 1), replayed > 0
        exited, status, reported, interrupted = False, None, False, False
        poller = select.poll()
        for fd in (*child.outputs, 0, pidfd):
            poller.register(fd, select.POLLIN)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and session and not (replaying or interrupted or exited):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signal.SIGALRM)
                    interrupted, deadline = True, time.monotonic() + INTERRUPT_GRACE_S
                    continue
                if remaining <= 0:
                    status = "timeout"
                    break
                # Once the child is gone, only drain what is already in the pipes.
                ready = {fd for fd, _ in poller.poll(0 if exited else poll_ms(remaining))}
                if 0 in ready:
                    self._host_gone(child)
                if pidfd in ready:
                    exited = True
                    poller.unregister(pidfd)
                for fd in output.open & ready:
                    if not output.read(fd):
                        poller.unregister(fd)
                if (status := output.over()) is not None:
                    break
                if session:
                    line = output.status_line()
                    if replaying and line == REPLAYED:
                        replaying, deadline = False, time.monotonic() + timeout
                        line = output.status_line()
                    if line is not None:
                        output.report, reported = line, True
                        break
                if exited and (not output.open or not ready):
                    break  # pipes drained, or held open only by processes the snippet left behind
        finally:
            if not reported:
                _kill(child)
        return output, status, reported

    def _result(self, output: _Output, status: str | None, exit_code: int) -> dict:
        """The reply for what a snippet (or a session's block) wrote and how it ended."""
        stdout, stderr = output.texts()
        result = {"stdout": stdout, "stderr": stderr, "exit": exit_code}
        if status == "report_limit":
            message = f"the snippet wrote over {MAX_REPORT} bytes to its status pipe (fd 3)"
            status, result["error"] = "error", {"type": "SandboxError", "message": message}
        if status is None:
            status, result["error"] = _status_from(output.report_text(), exit_code)
        result["status"] = status
        return result

    def _memory_result(self, result: dict) -> None:
        result["status"] = "memory"
        message = f"the snippet's processes together needed more than {self.memory_mb} MB"
        result["error"] = {"type": "MemoryError", "message": message}

    def _host_gone(self, child: _Prepared) -> None:
        if os.read(0, 1 << 16) == b"":
            _kill(child)
            if not self.pid_namespaces:
                self._sweep()
            os._exit(0)
        raise RuntimeError("protocol error: a request arrived while a snippet was running")

    def _sweep(self) -> None:
        """Without PID namespaces: kill whatever the snippet left, wherever it went (the
        zygote reaps it). With them the kernel killed it all when the snippet process, the
        namespace's init, ended."""
        if self.uid is not None:
            isolation.kill_all_of(self.uid)
        for leftover in isolation.descendants(self.zygote_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


class _Output:
    """What one snippet (or one block of a session) wrote to its stdout, stderr and status
    pipes (``fds``), each read no further than its cap allows."""

    def __init__(self, fds: list[int], output_limit: int):
        self.fds, self.output_limit = fds, output_limit
        self.caps = {fds[0]: output_limit, fds[1]: output_limit, fds[2]: MAX_REPORT}
        self.buffers = {fd: bytearray() for fd in fds}
        self.open = set(fds)
        self.report: bytes | None = None  # a session block's report line

    def read(self, fd: int) -> bool:
        """Read what is in ``fd`` (it is readable); False at its end."""
        chunk = os.read(fd, min(1 << 16, self.caps[fd] + 1 - len(self.buffers[fd])))
        if not chunk:
            self.open.discard(fd)
        self.buffers[fd] += chunk
        return bool(chunk)

    def drain(self) -> None:
        """Read whatever is already in the pipes of a paused session (nothing more comes)."""
        poller = select.poll()
        for fd in self.open:
            poller.register(fd, select.POLLIN)
        while self.over() is None and (ready := [fd for fd, _ in poller.poll(0)]):
            for fd in ready:
                if not self.read(fd):
                    poller.unregister(fd)

    def over(self) -> str | None:
        """``output_limit`` or ``report_limit`` once a cap is passed, else None."""
        if len(self.buffers[self.fds[0]]) + len(self.buffers[self.fds[1]]) > self.output_limit:
            return "output_limit"
        if len(self.buffers[self.fds[2]]) > MAX_REPORT:
            return "report_limit"
        return None

    def status_line(self) -> bytes | None:
        """The next complete line of a session's status pipe, taken out of it."""
        status = self.buffers[self.fds[2]]
        end = status.find(b"\n")
        if end < 0:
            return None
        line = bytes(status[: end + 1])
        del status[: end + 1]
        return line

    def report_text(self) -> bytes:
        return self.report if self.report is not None else bytes(self.buffers[self.fds[2]])

    def texts(self) -> tuple[str, str]:
        return tuple(
            bytes(self.buffers[fd][: self.output_limit]).decode("utf-8", "replace")
            for fd in self.fds[:2]
        )


def _kill(child: _Prepared) -> None:
    """SIGKILL the snippet process (even before it made its own session) and its group."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _send_line(fd: int, message: bytes, deadline: float) -> None:
    """One request line to a session (whose pipe is non-blocking: a session that does not read
    it keeps no worker waiting past the block's deadline, and then times out)."""
    view = memoryview(message + b"\n")
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view and poller.poll(max(deadline - time.monotonic(), 0) * 1000):
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def _deliver(fd: int, request: bytes) -> None:
    """The whole request, then EOF; a snippet process that already died (its isolation failed)
    reports that on its status pipe instead."""
    try:
        with contextlib.suppress(BrokenPipeError):
            view = memoryview(request)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _status_from(report: bytes, exit_code: int) -> tuple[str, dict | None]:
    """Status from the snippet's report, or from how it ended when it never reported. What the
    snippet itself wrote to fd 3 comes back as its error (a report is one JSON object)."""
    if not report:
        if exit_code < 0:
            if -exit_code == signal.SIGXCPU:
                return "timeout", None
            return "killed", {"type": "Killed", "message": _signal_name(-exit_code)}
        if exit_code == 0:
            return "ok", None  # os._exit(0) before the report
        return "error", {"type": "SystemExit", "message": str(exit_code)}
    try:
        parsed = json.loads(report)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        message = "the snippet wrote to its status pipe (fd 3): not a status report"
        return "error", {"type": "SandboxError", "message": message}
    if parsed.get("ok") is True:
        return "ok", None
    if parsed.get("timeout") is True:  # a session's block, interrupted at its deadline
        return "timeout", None
    if "isolation_failed" in parsed:
        message = (
            f"not run, its isolation failed: {capped_text(parsed['isolation_failed'], MAX_MESSAGE)}"
        )
        return "killed", {"type": "SandboxError", "message": message}
    error = {
        "type": capped_text(parsed.get("type", ""), MAX_NAME),
        "message": capped_text(parsed.get("message", ""), MAX_MESSAGE),
    }
    return ("memory" if parsed.get("memory") is True else "error"), error


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal without a name of its own
        return f"signal {number}"


def _fresh_pid_namespace(own: int) -> None:
    """Make the next child the init of a fresh PID namespace. Going back to our own namespace
    first allows this once per snippet, with a single fork."""
    isolation.setns(own, isolation.CLONE_NEWPID)
    isolation.unshare(isolation.CLONE_NEWPID)


def _usable_cgroups(paths: list[str] | None) -> bool:
    if not paths:
        return False
    try:
        cgroups.oom_kills(paths[0])
    except OSError:
        return False
    return isolation.works_in_child(lambda: cgroups.join(paths[0]))


def _start_zygote(
    settings: SnippetSettings, pid_namespace: int | None
) -> tuple[socket.socket, int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            keep = [theirs.fileno(), *([pid_namespace] if pid_namespace is not None else [])]
            for fd in range(3, os.sysconf("SC_OPEN_MAX")):
                if fd not in keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            Zygote(settings, theirs, pid_namespace).serve()
        finally:
            os._exit(1)
    theirs.close()
    return ours, pid


def _become_namespace_init() -> bool:
    """Continue as the init of a new PID namespace owned by our (user) namespace, so that each
    snippet can get a namespace of its own. The original process stays behind only to wait
    for it and pass on its exit status; it dies with it, and it with the original."""
    try:
        isolation.unshare(isolation.CLONE_NEWPID)
    except OSError:
        return False
    pid = os.fork()
    if pid:
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    return True


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not corrupt the protocol
    try:
        worker = WarmWorker(json.loads(sys.argv[1]))
    except WorkerStartError as error:
        reply.write(json.dumps({"ready": False, "error": str(error)}) + "\n")
        sys.exit(1)
    reply.write(json.dumps(worker.facts()) + "\n")
    for request in worker.requests():
        reply.write(json.dumps(worker.run(request)) + "\n")


if __name__ == "__main__":
    main()
