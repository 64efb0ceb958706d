"""The host side of the sandbox: a pool of warm workers behind a blocking and an async API."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from . import bwrap as _bwrap
from .result import ExecResult
from .uids import UidLease, UidRange

LOG = logging.getLogger(__name__)
OUTPUT_LIMIT = 1 << 20
# The worker enforces the deadline; the host waits this much longer before it gives up on the
# worker itself (it is then killed and replaced).
HOST_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# Host variables a worker may see: none of the user's environment otherwise (no API tokens).
_PASSTHROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TZ")
_WORKER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # One malloc arena per process: a thread's arena reserves 64 MB of address space, which
    # would count against RLIMIT_AS.
    "MALLOC_ARENA_MAX": "1",
}
# Where a root host reserves each worker's snippet uid.
SNIPPET_UIDS = UidRange()


class SandboxError(RuntimeError):
    """The sandbox could not start or was used after close()."""


class _WorkerHandle:
    """The host's handle on one warm worker process (``worker.WarmWorker``), the pipe protocol
    to it and, as root, the lease on the worker's snippet uid (held until the worker is gone)."""

    def __init__(self, config: dict, wrapper: list[str]):
        self.uid_lease = _reserve_uid() if os.geteuid() == 0 else None
        self.config = {**config, "uid": self.uid_lease.uid if self.uid_lease else None}
        try:
            self.process = _start_worker(self.config, wrapper)
        except BaseException:
            self._release_uid()
            raise
        # poll, not select: the host may hold thousands of descriptors (select stops at 1024).
        self._poller = select.poll()
        self._poller.register(self.process.stdout, select.POLLIN)
        self._buffer = b""
        self.facts = self._read(time.monotonic() + STARTUP_TIMEOUT_S)
        if not (self.facts or {}).get("ready"):
            self.kill()
            reason = (self.facts or {}).get("error") or f"exit code {self.process.poll()}"
            raise SandboxError(f"sandbox worker did not start: {reason}")

    def execute(self, code: str, prelude: list[str], timeout: float) -> dict | None:
        """The worker's reply, or None when the worker died or hung (it is killed then)."""
        request = json.dumps({"code": code, "prelude": prelude, "timeout": timeout})
        try:
            self.process.stdin.write(request.encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        reply = self._read(time.monotonic() + timeout + HOST_GRACE_S)
        if reply is None:
            self.kill()
        return reply

    def _read(self, deadline: float) -> dict | None:
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poller.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, wait: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # EOF: the worker kills any running snippet and exits
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process.stdout.close()
        self._release_uid()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._release_uid()

    def _release_uid(self) -> None:
        if self.uid_lease is not None:
            self.uid_lease.release()


def _reserve_uid() -> UidLease:
    lease = SNIPPET_UIDS.reserve()
    if lease is None:
        last = SNIPPET_UIDS.first + SNIPPET_UIDS.count - 1
        raise SandboxError(
            f"no free snippet uid in {SNIPPET_UIDS.first}-{last}: each is taken by another"
            " sandbox, a user, a group, a subuid/subgid range or a process, or is not mapped here"
        )
    return lease


def _start_worker(config: dict, wrapper: list[str]) -> subprocess.Popen:
    env = {**_WORKER_ENV, **{k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", "genprm.sandbox.worker", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
    )


class Sandbox:
    """Runs model-written Python in isolated, time- and memory-limited child processes.

    >>> with Sandbox(workers=1, timeout=5.0) as sandbox:
    ...     sandbox.run("print(x + 1)", prelude=["x = 41"]).feedback
    '42'

    Thread-safe; ``arun`` serves asyncio code. Closing (also on exit, on an exception in the
    ``with`` block, or when the host dies: workers exit on EOF of their stdin) leaves no
    processes behind. As root each worker's snippets run under a uid reserved for that worker
    alone (:mod:`genprm.sandbox.uids`). ``bwrap=True`` also runs each worker inside bubblewrap,
    which shows it only a read-only system and Python (:mod:`genprm.sandbox.bwrap`).
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        output_limit: int = OUTPUT_LIMIT,
        bwrap: bool = False,
    ):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._wrapper: list[str] = []
        if bwrap:
            found = shutil.which("bwrap")
            if found is None:
                raise SandboxError(
                    "Sandbox(bwrap=True) needs bwrap: install bubblewrap"
                    " (Debian/Ubuntu: apt-get install bubblewrap)"
                )
            self._wrapper = _bwrap.command(found)
        self.timeout = timeout
        self.output_limit = output_limit
        self._config = {"memory_mb": memory_mb, "output_limit": output_limit, "bwrap": bwrap}
        self._idle: queue.Queue[_WorkerHandle] = queue.Queue()
        self._workers: list[_WorkerHandle] = []
        self._lock = threading.Lock()
        self._closed = False
        with ThreadPoolExecutor(workers) as starter:
            starts = [
                starter.submit(_WorkerHandle, self._config, self._wrapper) for _ in range(workers)
            ]
        failed = [start.exception() for start in starts if start.exception()]
        if failed:  # do not leave the workers that did start running
            for start in starts:
                if not start.exception():
                    start.result().kill()
            raise failed[0]
        self._workers = [start.result() for start in starts]
        for worker in self._workers:
            self._idle.put(worker)
        missing = self._workers[0].facts["missing"]
        if missing:
            LOG.warning("sandbox isolation is weaker on this host: %s", "; ".join(missing))
        _OPEN_SANDBOXES.add(self)

    @property
    def isolation(self) -> dict:
        """What this host allowed: private network, PID namespaces, private /tmp, dedicated uid,
        whether the workers run in bubblewrap, and what is missing."""
        facts = self._workers[0].facts
        keys = ("private_network", "pid_namespaces", "private_scratch", "uid", "bwrap", "missing")
        return {key: facts[key] for key in keys}

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def run(
        self, code: str, prelude: list[str] | tuple[str, ...] = (), timeout: float | None = None
    ) -> ExecResult:
        """Run ``code`` after silently replaying ``prelude`` (earlier blocks of the same path)."""
        if not isinstance(code, str) or not all(isinstance(block, str) for block in prelude):
            raise TypeError("code and prelude blocks must be strings")
        timeout = self.timeout if timeout is None else timeout
        worker = self._acquire()
        try:
            reply = worker.execute(code, list(prelude), timeout) if worker.alive() else None
            if reply is None:
                if not self._closed:
                    worker = self._replace(worker)
                reply = _worker_died(timeout)
            return ExecResult.from_worker(reply, self.output_limit)
        finally:
            self._idle.put(worker)

    def run_many(self, jobs, timeout: float | None = None) -> list[ExecResult]:
        """Run ``(code, prelude)`` pairs (or bare code strings) concurrently; results in order."""
        jobs = [(job, ()) if isinstance(job, str) else job for job in jobs]
        with ThreadPoolExecutor(len(self._workers)) as pool:
            return list(pool.map(lambda job: self.run(job[0], job[1], timeout), jobs))

    async def arun(self, code: str, prelude=(), timeout: float | None = None) -> ExecResult:
        return await asyncio.to_thread(self.run, code, prelude, timeout)

    def _acquire(self) -> _WorkerHandle:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        worker = self._idle.get()
        if self._closed:
            self._idle.put(worker)
            raise SandboxError("the sandbox is closed")
        return worker

    def _replace(self, dead: _WorkerHandle) -> _WorkerHandle:
        dead.kill()
        fresh = _WorkerHandle(self._config, self._wrapper)
        with self._lock:
            self._workers[self._workers.index(dead)] = fresh
        return fresh

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN_SANDBOXES.discard(self)
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _worker_died(timeout: float) -> dict:
    error = {"type": "Killed", "message": "the sandbox worker died"}
    return {"status": "killed", "stdout": "", "stderr": "", "duration_s": timeout, "error": error}


# One exit handler for all sandboxes of the process, however many were made.
_OPEN_SANDBOXES: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_open_sandboxes() -> None:
    for sandbox in list(_OPEN_SANDBOXES):
        sandbox.close()


# A forked child does not own its parent's workers: its exit must not close them.
os.register_at_fork(after_in_child=_OPEN_SANDBOXES.clear)
