"""The host side of the sandbox: a pool of warm workers behind a blocking and an async API."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import math
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
from . import scratch
from .cgroups import CgroupError, WorkerCgroups, remove_stale
from .result import ExecResult
from .uids import UidLease, UidRange

LOG = logging.getLogger(__name__)
OUTPUT_LIMIT = 1 << 20
# Where a worker inside bubblewrap finds its memory cgroups.
BWRAP_CGROUP = "/run/genprm-cgroup"
# The worker enforces the deadline; the host waits this much longer before it gives up on the
# worker itself (it is then killed and replaced).
HOST_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# A reply holds stdout and stderr (each at most output_limit bytes; JSON escapes take up to 6
# characters a byte) and short fields: a worker that sends more is broken and gets replaced.
MAX_REPLY_FACTOR = 12
MAX_REPLY_EXTRA = 1 << 20
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

    def __init__(self, config: dict, bwrap: str | None):
        self.uid_lease = _reserve_uid() if os.geteuid() == 0 else None
        self.cgroups: WorkerCgroups | None = None
        # The thread whose request saw the worker die kills it while close() may be closing
        # it: the cgroups are removed and the uid given back once.
        self._releasing = threading.Lock()
        try:
            self.config, wrapper = self._configure(config, bwrap)
            self.process = _start_worker(self.config, wrapper)
        except BaseException:
            self._release()
            raise
        # poll, not select: the host may hold thousands of descriptors (select stops at 1024).
        self._poller = select.poll()
        self._poller.register(self.process.stdout, select.POLLIN)
        self._buffer = bytearray()
        self._reply_cap = MAX_REPLY_FACTOR * int(config["output_limit"]) + MAX_REPLY_EXTRA
        self.facts = self._read(time.monotonic() + STARTUP_TIMEOUT_S)
        if not (self.facts or {}).get("ready"):
            self.kill()
            reason = (self.facts or {}).get("error") or f"exit code {self.process.poll()}"
            raise SandboxError(f"sandbox worker did not start: {reason}")

    def _configure(self, config: dict, bwrap: str | None) -> tuple[dict, list[str]]:
        """The worker's config (its uid, memory cgroups, scratch folders) and the command
        that wraps it (bubblewrap, showing it its cgroups), or none."""
        config = {**config, "uid": None, "cgroups": None, "scratch": None}
        binds = {}
        if self.uid_lease is not None:
            config["uid"] = self.uid_lease.uid
            try:
                self.cgroups = WorkerCgroups(self.uid_lease.uid, config["memory_mb"] << 20)
            except CgroupError as error:
                LOG.debug("no memory cgroup: %s", error)  # the worker reports it as missing
            else:
                config["cgroups"] = self.cgroups.paths
                if bwrap:
                    binds[self.cgroups.folder] = BWRAP_CGROUP
                    config["cgroups"] = [
                        os.path.join(BWRAP_CGROUP, os.path.basename(p)) for p in self.cgroups.paths
                    ]
        if not bwrap:  # inside bubblewrap the worker searches its own, smaller view
            config["scratch"] = _world_writable()
        return config, (_bwrap.command(bwrap, binds) if bwrap else [])

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
        """The next reply line; None when the worker died, hung or sent more than any reply
        can hold."""
        fd = self.process.stdout.fileno()
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            searched = len(self._buffer)
            remaining = deadline - time.monotonic()
            if searched > self._reply_cap or remaining <= 0:
                return None
            try:
                if not self._poller.poll(remaining * 1000):
                    return None
                chunk = os.read(fd, 1 << 20)
            except OSError:  # close() closed the pipe under a request still waiting on it
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
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
        self._release()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._release()

    def _release(self) -> None:
        """Remove the memory cgroups (killing whatever is still dying inside), then give the
        uid back; once, whichever threads call it."""
        with self._releasing:
            cgroups, self.cgroups = self.cgroups, None
            lease, self.uid_lease = self.uid_lease, None
            if cgroups is not None:
                try:
                    cgroups.remove()
                except OSError as error:  # removed when this uid is reserved again
                    LOG.warning("could not remove %s: %s", cgroups.folder, error)
            if lease is not None:
                lease.release()


def _reserve_uid() -> UidLease:
    lease = SNIPPET_UIDS.reserve()
    if lease is None:
        last = SNIPPET_UIDS.first + SNIPPET_UIDS.count - 1
        raise SandboxError(
            f"no free snippet uid in {SNIPPET_UIDS.first}-{last}: each is taken by another"
            " sandbox, a user, a group, a subuid/subgid range or a process, or is not mapped here"
        )
    return lease


@functools.cache
def _world_writable() -> tuple[list[str], list[str]]:
    """The host's world-writable folders (searched once per process: it takes a while)."""
    return scratch.world_writable()


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
        self._bwrap: str | None = None
        if bwrap:
            self._bwrap = shutil.which("bwrap")
            if self._bwrap is None:
                raise SandboxError(
                    "Sandbox(bwrap=True) needs bwrap: install bubblewrap"
                    " (Debian/Ubuntu: apt-get install bubblewrap)"
                )
        self.timeout = _checked_timeout(timeout)
        self.output_limit = output_limit
        self._config = {"memory_mb": memory_mb, "output_limit": output_limit, "bwrap": bwrap}
        self._idle: queue.Queue[_WorkerHandle] = queue.Queue()
        self._workers: list[_WorkerHandle] = []
        self._lock = threading.Lock()
        self._closed = False
        if os.geteuid() == 0:  # the memory cgroups of killed hosts
            remove_stale(SNIPPET_UIDS.lease)
        with ThreadPoolExecutor(workers) as starter:
            starts = [
                starter.submit(_WorkerHandle, self._config, self._bwrap) for _ in range(workers)
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
        """What this host allowed: private network, PID namespaces, private scratch folders, a
        memory cgroup per snippet tree, dedicated uid, whether the workers run in bubblewrap,
        and what is missing."""
        facts = self._workers[0].facts
        keys = (
            "private_network", "pid_namespaces", "private_scratch", "memory_cgroup", "uid",
            "bwrap", "missing",
        )  # fmt: skip
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
        timeout = self.timeout if timeout is None else _checked_timeout(timeout)
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
        fresh = _WorkerHandle(self._config, self._bwrap)
        with self._lock:
            self._workers[self._workers.index(dead)] = fresh
        return fresh

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN_SANDBOXES.discard(self)
        failed = []
        for worker in self._workers:  # every one: a request blocked on a worker left open
            try:  # would keep its thread, and the host's exit, waiting
                worker.close()
            except Exception as error:  # noqa: BLE001 - raised once all are closed
                failed.append(error)
        if failed:
            raise failed[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _checked_timeout(timeout) -> float:
    """A positive, finite number of seconds (a snippet never runs unbounded)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
    return float(timeout)


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
