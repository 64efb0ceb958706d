"""A live interpreter namespace in the sandbox for the code blocks of one path.

Upstream GenPRM ran each solution's blocks in one in-process namespace: later blocks see the
names earlier ones defined, what ran once is never run again (random values drawn keep their
values, a block that timed out does not run again), and each block costs its own time only. A
session gives the same in the sandbox: one confined snippet process, held by one worker, runs
the path's blocks one after the other, with the isolation, limits and accounting of a snippet,
and is paused in between. A block past its deadline is interrupted, as upstream's
``signal.alarm`` did, and the session keeps what it did before. Where the session is lost (its
worker ended it to make room for another, the worker died, or a block ignored the interrupt,
overflowed its output or crashed the process) the next block starts it again by silently
replaying the blocks that succeeded, and the lost block never runs again. A block succeeded
when it ran to its end or stopped at a Python exception (whose partial effects upstream's
namespace kept too); not one that timed out, ran out of memory, overflowed or crashed.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from typing import Self

from .errors import SandboxError
from .result import ExecResult

# A block succeeded (a session started again replays it) when it ran to its end or to an
# exception; a time-out, memory, output or crash result did not.
SUCCEEDED = ("ok", "error")


class Session:
    """One path's interpreter in a :class:`~genprm.sandbox.Sandbox`, from
    ``sandbox.session()``; blocks run one at a time, in order.

    >>> from genprm.sandbox import Sandbox
    >>> with Sandbox(workers=1) as sandbox, sandbox.session() as session:
    ...     session.run("import random; x = random.random()").status
    ...     session.run("print(x)").stdout == session.run("print(x)").stdout
    'ok'
    True

    Close it when the path ends (``with``/``async with`` do; closing the sandbox ends every
    session): its process is killed and its memory cgroup freed. One dropped without closing
    is ended by the sandbox soon after.
    """

    def __init__(self, sandbox, prelude: tuple[str, ...]):
        self.name = uuid.uuid4().hex
        self._sandbox = sandbox
        self._succeeded = list(prelude)
        self.worker = None  # set by the sandbox: the worker that holds the session, if any
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, sandbox._abandoned.append, self.name)

    @property
    def succeeded(self) -> tuple[str, ...]:
        """The prelude, then the blocks that succeeded here, in order: what a session started
        again (or another one, for a copy of this path) replays."""
        return tuple(self._succeeded)

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run ``code`` in the session's namespace (the sandbox's timeout unless given)."""
        with self._lock:
            if self._closed:
                raise SandboxError("the session is closed")
            result, alive = self._sandbox._run_in_session(self, code, timeout)
            if alive and result.status in SUCCEEDED:
                self._succeeded.append(code)
        return result

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        return await self._in_thread(self.run, code, timeout)

    def close(self) -> None:
        """End the session (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer.detach()
        self._sandbox._end_session(self.name)

    async def aclose(self) -> None:
        await self._in_thread(self.close)

    async def _in_thread(self, call, *args):
        """``call(*args)`` in one of the sandbox's threads, which may wait for this session's
        worker without holding up calls for the others."""
        if self._sandbox.closed:  # its threads are gone; closing then has nothing left to do
            return call(*args)
        return await asyncio.get_running_loop().run_in_executor(self._sandbox._threads, call, *args)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()
