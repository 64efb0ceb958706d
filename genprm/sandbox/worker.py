"""The warm sandbox worker: ``python -m genprm.sandbox.worker CONFIG_JSON``, started by
:class:`genprm.sandbox.Sandbox`, one per slot.

It imports and exercises sympy, numpy and math-verify once, isolates itself (private network
namespace, init of its own PID namespace), then serves one JSON request per line on stdin: for
each snippet it forks one fresh child (its own session and, where possible, PID namespace and
private tmpfs /tmp; closed descriptors, scrubbed environment, rlimits, no capabilities, and as
root the dedicated uid the host reserved for this worker), collects its output under a
wall-clock deadline and an output cap, kills whatever the snippet left behind, and answers one
JSON line on stdout. EOF on stdin (the host went away) ends it.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import importlib
import io
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time

from . import isolation

# Imported before any snippet runs. As root the snippet runs under a uid that may not be able
# to read the Python installation (e.g. under /root), so what it imports must already be loaded.
WARM_MODULES = (
    "math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools", "operator",
    "collections", "heapq", "bisect", "array", "struct", "copy", "re", "string", "textwrap",
    "pprint", "json", "time", "datetime", "calendar", "statistics", "random", "typing",
    "dataclasses", "socket", "encodings.idna", "numpy", "sympy", "sympy.abc", "math_verify",
)  # fmt: skip
EXTRA_PROCESSES = 128  # threads count too: room for a snippet's own threads and children
MAX_FILE_BYTES = 16 << 20
MAX_OPEN_FILES = 64
MAX_MESSAGE = 10_000
_SNIPPET_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


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


class WarmWorker:
    """The worker process itself: isolates itself once, then forks one child per snippet
    (the host side is ``pool._WorkerHandle``). ``config["uid"]`` is the snippet uid the host
    reserved for this worker (``uids.UidRange``), None when the host is not root."""

    def __init__(self, config: dict):
        self.memory_bytes = int(config["memory_mb"]) << 20
        self.output_limit = int(config["output_limit"])
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
        if self.pid_namespaces:
            self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY)
            self.pid_namespaces = isolation.works_in_child(self._enter_fresh_pid_namespace)
        if not self.pid_namespaces:
            self.missing.append("PID namespace: leftover processes are found by process tree")
        self.owner = self.uid if self.uid is not None else os.getuid()
        self.keep = isolation.scratch_shadowed([*sys.path, sys.prefix, sys.base_prefix])
        self.private_scratch = isolation.works_in_child(
            lambda: isolation.private_scratch(self.owner, self.keep)
        )
        if not self.private_scratch:
            self.missing.append("mount namespace: files written to /tmp outlive the snippet")
        if self.uid is None:
            self.missing.append("dedicated uid (not root): snippets run as the host user")
        isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
        self.missing += [f"module {name} (not installed)" for name in warm_up()]
        # Keep the collector away from the warm objects: a child's collection would write to
        # (and so copy) every page holding them.
        gc.freeze()
        self.address_space_base = _address_space()
        self._stdin = b""

    def _enter_fresh_pid_namespace(self) -> None:
        """Make the next child the init of a fresh PID namespace. Going back to our own
        namespace first allows this once per snippet, with a single fork."""
        isolation.setns(self.own_pid_namespace, isolation.CLONE_NEWPID)
        isolation.unshare(isolation.CLONE_NEWPID)

    def facts(self) -> dict:
        return {
            "ready": True,
            "uid": self.uid,
            "private_network": self.private_network,
            "pid_namespaces": self.pid_namespaces,
            "private_scratch": self.private_scratch,
            "bwrap": self.bwrap,
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
        # The working directory: the snippet's private /tmp, else a fresh folder of its own.
        workdir = "/tmp" if self.private_scratch else tempfile.mkdtemp(prefix="genprm-snippet-")
        if not self.private_scratch:
            os.chown(workdir, self.owner, self.owner)
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, status
        started = time.monotonic()
        if self.pid_namespaces:
            self._enter_fresh_pid_namespace()
        pid = os.fork()
        if pid == 0:
            try:
                self._child(request, workdir, [w for _, w in pipes])
            finally:
                os._exit(127)
        for _, write_end in pipes:
            os.close(write_end)
        try:
            result = self._collect(pid, [r for r, _ in pipes], started + float(request["timeout"]))
        finally:
            for read_end, _ in pipes:
                os.close(read_end)
            self._sweep(pid)
            if not self.private_scratch:
                shutil.rmtree(workdir, ignore_errors=True)
        result["duration_s"] = time.monotonic() - started
        return result

    def _collect(self, pid: int, fds: list[int], deadline: float) -> dict:
        pidfd = os.pidfd_open(pid)
        buffers = {fd: bytearray() for fd in fds}
        open_fds, exited, status = set(fds), False, None
        poller = select.poll()
        for fd in (*fds, 0, pidfd):
            poller.register(fd, select.POLLIN)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = "timeout"
                    break
                # Once the child is gone, only drain what is already in the pipes.
                ready = {fd for fd, _ in poller.poll(0 if exited else remaining * 1000)}
                if 0 in ready:
                    self._host_gone(pid)
                if pidfd in ready:
                    exited = True
                    poller.unregister(pidfd)
                for fd in open_fds & ready:
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        buffers[fd] += chunk
                    else:
                        open_fds.discard(fd)
                        poller.unregister(fd)
                if len(buffers[fds[0]]) + len(buffers[fds[1]]) > self.output_limit:
                    status = "output_limit"
                    break
                if exited and (not open_fds or not ready):
                    break  # pipes drained, or held open only by processes the snippet left behind
        finally:
            os.close(pidfd)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _, wait_status = os.waitpid(pid, 0)
        stdout, stderr = (bytes(buffers[fd][: self.output_limit]) for fd in fds[:2])
        result = {
            "stdout": stdout.decode("utf-8", "replace"),
            "stderr": stderr.decode("utf-8", "replace"),
            "exit": os.waitstatus_to_exitcode(wait_status),
        }
        if status is None:
            status, error = _status_from(buffers[fds[2]], result["exit"])
            result["error"] = error
        result["status"] = status
        return result

    def _host_gone(self, pid: int) -> None:
        if os.read(0, 1 << 16) == b"":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._sweep(pid)
            os._exit(0)
        raise RuntimeError("protocol error: a request arrived while a snippet was running")

    def _sweep(self, pid: int) -> None:
        """Kill and reap everything the snippet started, wherever it went. In a PID namespace
        the kernel already killed it all when the namespace's init (the snippet) ended."""
        if not self.pid_namespaces:
            if self.uid is not None:
                isolation.kill_all_of(self.uid)
            # Our pid as /proc (the host's) numbers it: os.getpid() is 1 inside our namespace.
            for leftover in isolation.descendants(int(os.readlink("/proc/self"))):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def _child(self, request: dict, workdir: str, fds: list[int]) -> None:
        """In the forked child (the init of a fresh PID namespace where possible): isolate,
        then run the snippet. If any step of the isolation fails the snippet does not run: the
        child reports the failure on the status pipe and ends."""
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        for target, fd in zip((0, 1, 2, 3), (null, *fds)):
            os.dup2(fd, target)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        try:
            self._isolate(float(request["timeout"]), workdir)
        except (OSError, ValueError) as error:
            os.write(3, json.dumps({"isolation_failed": str(error)}).encode())
            os._exit(1)
        _execute(request["prelude"], request["code"])

    def _isolate(self, timeout: float, workdir: str) -> None:
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        if self.private_scratch:
            isolation.private_scratch(self.owner, self.keep)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(_SNIPPET_ENV, HOME=workdir, TMPDIR=workdir)
        isolation.set_limits(
            address_space=self.address_space_base + self.memory_bytes,
            cpu_seconds=int(timeout) + 2,
            processes=EXTRA_PROCESSES
            + (0 if self.uid is not None else isolation.processes_of(self.owner)),
            file_bytes=MAX_FILE_BYTES,
            files=MAX_OPEN_FILES,
        )
        if self.uid is not None:
            isolation.drop_to_uid(self.uid)
        # Again after the uid change, which clears it: the snippet dies with its worker.
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        isolation.drop_capabilities()
        if not self.private_network:
            isolation.refuse_sockets()


def _execute(prelude: list[str], code: str) -> None:
    """Replay the prelude silently, run the snippet, report on fd 3, and exit."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    runner = os.getpid()  # processes the snippet forks end here too, but only the runner reports
    report: dict = {}
    for block in prelude:
        with contextlib.suppress(BaseException), contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, "<string>", "exec"), namespace)  # noqa: S102
    try:
        exec(compile(code, "<string>", "exec"), namespace)  # noqa: S102
    except SystemExit as stop:
        if stop.code not in (None, 0):
            report = {"type": "SystemExit", "message": str(stop.code)}
    except BaseException as error:  # noqa: BLE001 - every failure is the snippet's result
        report = {
            "type": type(error).__name__,
            "message": _message(error),
            "memory": isinstance(error, MemoryError),
        }
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    if os.getpid() == runner:
        with contextlib.suppress(BaseException):
            os.write(3, json.dumps(report or {"ok": True}).encode())
    os._exit(0)


def _message(error: BaseException) -> str:
    try:
        return str(error)[:MAX_MESSAGE]
    except BaseException:  # noqa: BLE001
        return "<unprintable>"


def _status_from(report: bytes, exit_code: int) -> tuple[str, dict | None]:
    """Status from the child's report, or from how it ended when it never reported."""
    try:
        parsed = json.loads(report) if report else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("ok"):
        return "ok", None
    if isinstance(parsed, dict) and "isolation_failed" in parsed:
        message = f"not run, its isolation failed: {parsed['isolation_failed']}"
        return "killed", {"type": "SandboxError", "message": message}
    if isinstance(parsed, dict) and "type" in parsed:
        error = {"type": str(parsed["type"]), "message": str(parsed.get("message", ""))}
        return ("memory" if parsed.get("memory") else "error"), error
    if exit_code < 0:
        if -exit_code == signal.SIGXCPU:
            return "timeout", None
        return "killed", {"type": "Killed", "message": signal.Signals(-exit_code).name}
    if exit_code == 0:
        return "ok", None  # os._exit(0) before the report
    return "error", {"type": "SystemExit", "message": str(exit_code)}


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
