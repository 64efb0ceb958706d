"""The host side of the sandbox: a pool of warm workers behind a blocking and an async API, and
the live sessions (:mod:`genprm.sandbox.session`) the workers hold."""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import os
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
from .errors import SandboxError
from .result import ExecResult
from .session import Session
from .uids import UidLease, UidRange
from .waits import MAX_TIMEOUT_S, poll_ms

LOG = logging.getLogger(__name__)
OUTPUT_LIMIT = 1 << 20
# Where a worker inside bubblewrap finds its memory cgroups.
BWRAP_CGROUP = "/run/genprm-cgroup"
# The worker enforces the deadline; the host waits this much longer before it gives up on the
# worker itself (it is then killed and replaced).
HOST_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 120.0
# Live sessions a worker holds at most (each a paused process with a memory cgroup of its own);
# past that its least recently used one is ended, to be rebuilt when its path goes on.
SESSIONS_PER_WORKER = 64
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


class _WorkerHandle:
    """The host's handle on one warm worker process (``worker.WarmWorker``), the pipe protocol
    to it and, as root, the lease on the worker's snippet uid (held until the worker is gone).
    The sandbox keeps, under its lock, the names of the sessions the worker holds (least
    recently used first), those to end with the next request, and the callers waiting for this
    worker alone."""

    def __init__(self, config: dict, bwrap: str | None):
        self.uid_lease = _reserve_uid() if os.geteuid() == 0 else None
        self.cgroups: WorkerCgroups | None = None
        self.sessions: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.closing: list[str] = []
        self.waiters: collections.deque[_Waiter] = collections.deque()
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
                self.cgroups = WorkerCgroups(
                    self.uid_lease.uid, config["memory_mb"] << 20, sessions=config["sessions"]
                )
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

    def execute(self, request: dict, budget: float) -> dict | None:
        """The worker's reply, or None when the worker died or took more than ``budget``
        seconds (what its snippets may take) and the grace (it is killed then)."""
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        reply = self._read(time.monotonic() + budget + HOST_GRACE_S)
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
                if not self._poller.poll(poll_ms(remaining)):
                    continue
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


class _Waiter:
    """A caller waiting for a worker (the ``order`` of its arrival decides who is next)."""

    def __init__(self, order: int):
        self.order = order
        self.worker: _WorkerHandle | None = None
        self.error: BaseException | None = None
        self._handed = threading.Event()

    def hand(self, worker: _WorkerHandle | None, error: BaseException | None = None) -> None:
        self.worker, self.error = worker, error
        self._handed.set()

    def wait(self) -> _WorkerHandle | None:
        self._handed.wait()
        if self.error is not None:
            raise self.error
        return self.worker


class Sandbox:
    """Runs model-written Python in isolated, time- and memory-limited child processes.

    >>> with Sandbox(workers=1, timeout=5.0) as sandbox:
    ...     sandbox.run("print(x + 1)", prelude=["x = 41"]).feedback
    '42'

    Thread-safe; ``arun`` serves asyncio code. :meth:`session` keeps one interpreter namespace
    alive between the blocks of a path. Closing (also on exit, on an exception in the ``with``
    block, or when the host dies: workers exit on EOF of their stdin) leaves no processes
    behind. As root each worker's snippets run under a uid reserved for that worker alone
    (:mod:`genprm.sandbox.uids`). ``bwrap=True`` also runs each worker inside bubblewrap, which
    shows it only a read-only system and Python (:mod:`genprm.sandbox.bwrap`). ``sessions``:
    the live sessions each worker holds at most.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        output_limit: int = OUTPUT_LIMIT,
        bwrap: bool = False,
        sessions: int = SESSIONS_PER_WORKER,
    ):
        if workers < 1 or sessions < 1:
            raise ValueError("workers and sessions must be at least 1")
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
        self.sessions_per_worker = sessions
        self._config = {
            "memory_mb": memory_mb, "output_limit": output_limit, "bwrap": bwrap,
            "sessions": sessions,
        }  # fmt: skip
        self._idle: list[_WorkerHandle] = []
        self._waiters: collections.deque[_Waiter] = collections.deque()  # for any worker
        self._arrivals = itertools.count()
        # Names of sessions dropped without close(), from their finalizers: ended by the next
        # caller that gives a worker back (a finalizer may run while this thread holds the lock).
        self._abandoned: collections.deque[str] = collections.deque()
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
        self._idle = list(self._workers)
        # A session call waits in a thread for its own worker: enough threads that none waits
        # behind calls for other workers.
        self._threads = ThreadPoolExecutor(workers * (sessions + 1), "genprm-sandbox")
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
            "bwrap", "live_sessions", "missing",
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
        _check_blocks(code, prelude)
        timeout = self.timeout if timeout is None else _checked_timeout(timeout)
        worker = self._acquire()
        try:
            request = {"code": code, "prelude": list(prelude), "timeout": timeout}
            worker, reply = self._exchange(worker, request, timeout)
            return ExecResult.from_worker(reply or _worker_died(timeout), self.output_limit)
        finally:
            self._release(worker)

    def run_many(self, jobs, timeout: float | None = None) -> list[ExecResult]:
        """Run ``(code, prelude)`` pairs (or bare code strings) concurrently; results in order."""
        jobs = [(job, ()) if isinstance(job, str) else job for job in jobs]
        with ThreadPoolExecutor(len(self._workers)) as pool:
            return list(pool.map(lambda job: self.run(job[0], job[1], timeout), jobs))

    async def arun(self, code: str, prelude=(), timeout: float | None = None) -> ExecResult:
        return await asyncio.to_thread(self.run, code, prelude, timeout)

    def session(self, prelude: list[str] | tuple[str, ...] = ()) -> Session:
        """A live interpreter namespace for the blocks of one path (:class:`Session`), that
        starts from ``prelude``: blocks that succeeded on the path before, replayed silently
        before its first block."""
        _check_blocks("", prelude)
        if self._closed:
            raise SandboxError("the sandbox is closed")
        return Session(self, tuple(prelude))

    def _run_in_session(
        self, session: Session, code: str, timeout: float | None
    ) -> tuple[ExecResult, bool]:
        """One block of ``session`` (see :meth:`Session.run`) and whether the session lives
        on: on the worker that holds it, or, where none does, on any, which starts it again
        from the blocks that succeeded. Where the workers cannot keep sessions alive, each
        block is a fresh snippet after them."""
        _check_blocks(code, ())
        timeout = self.timeout if timeout is None else _checked_timeout(timeout)
        if not self._workers[0].facts["live_sessions"]:
            return self.run(code, session.succeeded, timeout), True
        worker = self._acquire(session.worker) if session.worker is not None else None
        worker = worker or self._acquire()
        try:
            reply = {"missing": True}
            while reply.get("missing"):  # it died while it waited: started again
                request = self._session_request(worker, session, code, timeout)
                budget = timeout * (1 + len(request.get("replay", ())))
                worker, reply = self._exchange(worker, request, budget)
                reply = reply or _worker_died(timeout)
                if not reply.get("alive"):
                    with self._lock:
                        worker.sessions.pop(session.name, None)
            session.worker = worker if reply.get("alive") else None
            return ExecResult.from_worker(reply, self.output_limit), session.worker is not None
        finally:
            self._release(worker)

    def _session_request(
        self, worker: _WorkerHandle, session: Session, code: str, timeout: float
    ) -> dict:
        """The request for a block of ``session`` on ``worker`` (held by the caller): the
        blocks to replay where the worker does not hold the session, whose least recently used
        session then makes room if it must."""
        request = {"session": session.name, "code": code, "timeout": timeout}
        with self._lock:
            if session.name in worker.sessions:
                worker.sessions.move_to_end(session.name)
                return request
            if len(worker.sessions) >= self.sessions_per_worker:
                evicted, _ = worker.sessions.popitem(last=False)
                worker.closing.append(evicted)
            worker.sessions[session.name] = None
        return {**request, "replay": list(session.succeeded)}

    def _end_session(self, name: str) -> None:
        """End a session promptly: its worker gets the close now if it is idle, else with the
        request after the one it is serving."""
        with self._lock:
            worker = next((w for w in self._workers if name in w.sessions), None)
            if worker is None or self._closed:
                return
            del worker.sessions[name]
            worker.closing.append(name)
            if worker not in self._idle:
                return
            self._idle.remove(worker)
        self._release(worker)

    def _acquire(self, pinned: _WorkerHandle | None = None) -> _WorkerHandle | None:
        """An idle worker, after waiting for one if need be; ``pinned``: that worker only (a
        session's), None when it is gone (it died and was replaced)."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if pinned is not None and pinned not in self._workers:
                return None
            if pinned is None and self._idle:
                # The one with the fewest sessions: a new session then ends none.
                worker = min(self._idle, key=lambda idle: len(idle.sessions))
            elif pinned in self._idle:
                worker = pinned
            else:
                waiter = _Waiter(next(self._arrivals))
                (pinned.waiters if pinned is not None else self._waiters).append(waiter)
                worker = None
            if worker is not None:
                self._idle.remove(worker)
                return worker
        return waiter.wait()

    def _release(self, worker: _WorkerHandle) -> None:
        """Give back a worker the caller held: it first ends the sessions waiting to close on
        it, then goes to the caller that has waited longest for it (or for any worker). Idle
        workers that the sessions dropped meanwhile left something to end are taken to end it
        too."""
        held = [worker]
        while held:
            worker = held.pop()
            with self._lock:
                while self._abandoned:
                    name = self._abandoned.popleft()
                    holder = next((w for w in self._workers if name in w.sessions), None)
                    if holder is not None:
                        del holder.sessions[name]
                        holder.closing.append(name)
                if not self._closed:
                    held += [idle for idle in self._idle if idle.closing]
                    self._idle = [idle for idle in self._idle if not idle.closing]
                if not worker.closing or self._closed:
                    self._hand_over(worker)
                    continue
            worker, _ = self._exchange(worker, {}, 0.0)
            held.append(worker)

    def _hand_over(self, worker: _WorkerHandle) -> None:
        """To the caller that has waited longest for this worker or any (under the lock)."""
        queues = [queue for queue in (worker.waiters, self._waiters) if queue]
        if queues:
            min(queues, key=lambda queue: queue[0].order).popleft().hand(worker)
        else:
            self._idle.append(worker)

    def _exchange(
        self, worker: _WorkerHandle, request: dict, budget: float
    ) -> tuple[_WorkerHandle, dict | None]:
        """Send ``request``, with the closes waiting for the worker, to a worker the caller
        holds: the worker the caller now holds (a fresh one where it died) and the reply (None
        where it died)."""
        with self._lock:
            closing, worker.closing = worker.closing, []
        if closing:
            request = {**request, "close": closing}
        reply = worker.execute(request, budget) if worker.alive() else None
        if reply is None and not self._closed:
            worker = self._replace(worker)
        return worker, reply

    def _replace(self, dead: _WorkerHandle) -> _WorkerHandle:
        dead.kill()
        fresh = _WorkerHandle(self._config, self._bwrap)
        with self._lock:
            self._workers[self._workers.index(dead)] = fresh
            # Its sessions died with it: their callers start them again on any worker.
            for waiter in dead.waiters:
                waiter.hand(None)
        return fresh

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closed = SandboxError("the sandbox is closed")
            for waiters in [self._waiters, *(worker.waiters for worker in self._workers)]:
                while waiters:
                    waiters.popleft().hand(None, closed)
        _OPEN_SANDBOXES.discard(self)
        self._threads.shutdown(wait=False)
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


def _check_blocks(code: str, prelude) -> None:
    if not isinstance(code, str) or not all(isinstance(block, str) for block in prelude):
        raise TypeError("code and prelude blocks must be strings")


def _checked_timeout(timeout) -> float:
    """A positive number of seconds up to MAX_TIMEOUT_S (a snippet never runs unbounded)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_S):
        raise ValueError(
            f"timeout must be a positive number of seconds, at most {MAX_TIMEOUT_S:g} "
            f"(a day), not {timeout!r}"
        )
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
