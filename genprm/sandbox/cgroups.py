"""Memory cgroups that cap a snippet's whole process tree (cgroup v1 ``memory`` controller, as
root): every process it forks, what it writes to tmpfs, SysV shared memory and the kernel memory
its files and directories take all count against one limit, and going over it OOM-kills inside
the tree only.

Each worker gets two cgroups below the host's own memory cgroup (``genprm-sandbox-<uid>/0`` and
``/1``, named after the worker's reserved uid, so one left by a killed host is found and removed
when the uid is reserved again, or by the next sandbox to start while the uid is not leased):
the snippet running holds one while the next snippet's process waits, already inside the other.
Each live session of the worker (``Sandbox.session()``) holds one more of its own, ``s0``,
``s1``, ... for as long as it lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from .uids import UidLease

SLOTS = ("0", "1")
SESSION_PREFIX = "s"
PREFIX = "genprm-sandbox-"
# Removing a killed host's cgroups: whatever was inside has had time to die.
STALE_TIMEOUT_S = 2.0
LOG = logging.getLogger(__name__)


class CgroupError(OSError):
    """No memory cgroup can be made here (not root, no cgroup v1 memory controller, ...)."""


def own_memory_cgroup(
    cgroup_file: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> str:
    """The folder of this process's cgroup v1 memory cgroup."""
    with open(cgroup_file) as handle:
        paths = [
            line.rstrip("\n").split(":", 2)[2]
            for line in handle
            if "memory" in line.split(":", 2)[1].split(",")
        ]
    if not paths:
        raise CgroupError("no cgroup v1 memory controller (cgroup v2 is not supported yet)")
    with open(mountinfo) as handle:
        for line in handle:
            fields = line.split()
            extra = fields[fields.index("-") + 1 :]
            if extra[0] == "cgroup" and "memory" in extra[2].split(","):
                root, mountpoint = fields[3], fields[4]
                relative = os.path.relpath(paths[0], root)
                if not relative.startswith(".."):
                    return os.path.normpath(os.path.join(mountpoint, relative))
    raise CgroupError("the memory cgroup hierarchy is not mounted here")


class WorkerCgroups:
    """The two snippet cgroups of one worker and its ``sessions`` session cgroups, each limited
    to ``limit_bytes``."""

    def __init__(self, uid: int, limit_bytes: int, parent: str | None = None, sessions: int = 0):
        self.folder = os.path.join(parent or own_memory_cgroup(), f"{PREFIX}{uid}")
        self.slots = (*SLOTS, *(f"{SESSION_PREFIX}{index}" for index in range(sessions)))
        self.remove()  # left by a host that was killed while it held this uid
        try:
            os.mkdir(self.folder)
            for slot in self.paths:
                os.mkdir(slot)
                _write(slot, "memory.limit_in_bytes", limit_bytes)
                # Without swap accounting there is no such file, and nothing to swap to.
                with contextlib.suppress(FileNotFoundError):
                    _write(slot, "memory.memsw.limit_in_bytes", limit_bytes)
        except OSError as error:
            self.remove()
            raise CgroupError(error.errno, f"cannot make a memory cgroup: {error}") from error

    @property
    def paths(self) -> list[str]:
        """The snippet slots, then the session slots."""
        return [os.path.join(self.folder, slot) for slot in self.slots]

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is still inside (processes of a dead worker finish dying) and remove."""
        remove_cgroups(self.folder, timeout)


def remove_cgroups(folder: str, timeout: float = 10.0) -> None:
    """Remove a worker's cgroup ``folder`` and its slots, killing what is still inside."""
    deadline = time.monotonic() + timeout
    try:
        slots = [entry.path for entry in os.scandir(folder) if entry.is_dir()]
    except FileNotFoundError:
        return
    for path in [*slots, folder]:
        while os.path.isdir(path):
            for pid in members(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(path)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def remove_stale(lease: Callable[[int], UidLease | None], parent: str | None = None) -> None:
    """Remove every worker cgroup folder below ``parent`` (default: ours) whose uid no live
    sandbox holds: ``lease(uid)`` takes the uid's lock, or gives None where another holds it.
    The lock is held while the folder goes, so that no sandbox starts on that uid meanwhile."""
    try:
        parent = parent or own_memory_cgroup()
        names = os.listdir(parent)
    except OSError:  # no memory cgroup here (CgroupError), so none to clean up
        return
    for name in names:
        uid = name.removeprefix(PREFIX)
        if not (name.startswith(PREFIX) and uid.isdigit()):
            continue
        held = lease(int(uid))
        if held is None:
            continue
        folder = os.path.join(parent, name)
        try:
            remove_cgroups(folder, STALE_TIMEOUT_S)
        except OSError as error:
            LOG.warning("could not remove %s, left by a killed sandbox: %s", folder, error)
        finally:
            held.release()


def join(path: str) -> None:
    """Move the calling process into the cgroup at ``path`` (what it forks follows)."""
    _write(path, "cgroup.procs", 0)


def members(path: str) -> list[int]:
    with open(os.path.join(path, "cgroup.procs")) as handle:
        return [int(line) for line in handle if line.strip()]


def oom_kills(path: str) -> int:
    """How many processes the kernel has killed in this cgroup for going over its limit."""
    with open(os.path.join(path, "memory.oom_control")) as handle:
        for line in handle:
            name, value = line.split()
            if name == "oom_kill":
                return int(value)
    raise CgroupError(f"no oom_kill count in {path}/memory.oom_control (kernel before 4.13)")


def _write(path: str, name: str, value: int) -> None:
    with open(os.path.join(path, name), "w") as handle:
        handle.write(str(value))
