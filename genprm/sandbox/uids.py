"""Dedicated snippet uids (as root): one per worker, from a range that nothing else uses.

A uid is handed out only when it is verifiably no one else's: outside every range in
/etc/subuid and /etc/subgid (those belong to real users' containers), neither a user nor a group
(looked up through NSS, so /etc/passwd, /etc/group and any directory service count), mapped in
this user namespace, and owned by no process. A lock file per uid, held for the worker's life,
keeps every other sandbox, in this process or another, off it. So whatever runs under a reserved
uid is ours, and only a reserved uid may be swept by uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
from dataclasses import dataclass

# systemd leaves 0x70000000-0x7FFDFFFF unassigned (https://systemd.io/UIDS-GIDS/); shadow's
# useradd hands out subordinate ranges from 100000 up.
FIRST_UID = 1_900_000_000
UID_COUNT = 65_536
LOCK_DIR = "/run/genprm-sandbox/uids"
SUBID_FILES = ("/etc/subuid", "/etc/subgid")
ID_MAPS = ("/proc/self/uid_map", "/proc/self/gid_map")


class UidLease:
    """A reserved uid; the reservation lasts until :meth:`release` (or this process's end)."""

    def __init__(self, uid: int, lock_fd: int):
        self.uid = uid
        self._lock_fd = lock_fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the file drops its lock
            self._lock_fd = None


@dataclass(frozen=True)
class UidRange:
    """Where :meth:`reserve` looks: ``count`` uids from ``first`` (each doubles as the gid)."""

    first: int = FIRST_UID
    count: int = UID_COUNT
    lock_dir: str = LOCK_DIR
    subid_files: tuple[str, ...] = SUBID_FILES

    def reserve(self) -> UidLease | None:
        """The lowest free uid of the range, reserved; None when every one is taken."""
        foreign = subordinate_ranges(self.subid_files)
        mapped = [_id_map(path) for path in ID_MAPS]
        for uid in range(self.first, self.first + self.count):
            if _inside(uid, foreign) or not all(_inside(uid, ids) for ids in mapped):
                continue
            if is_account(uid):
                continue
            lease = self.lease(uid)
            if lease is None:
                continue
            # Checked under the lock: processes of an earlier holder may still be dying.
            if in_use(uid):
                lease.release()
                continue
            return lease
        return None

    def lease(self, uid: int) -> UidLease | None:
        """``uid``'s lock, taken (no other check: see :meth:`reserve`); None while another
        holds it."""
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.lock_dir, str(uid))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return UidLease(uid, fd)


def subordinate_ranges(paths) -> list[range]:
    """The id ranges of ``name:first:count`` lines in subuid/subgid files (missing files: none)."""
    ranges = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path) as handle:
            for line in handle:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    first, count = int(fields[1]), int(fields[2])
                    ranges.append(range(first, first + count))
    return ranges


def is_account(uid: int) -> bool:
    """Whether ``uid`` names a user, or the same number a group (the snippet's gid is its uid)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def in_use(uid: int) -> bool:
    """Whether a process has ``uid`` as its real, effective, saved or filesystem uid."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and uid in _uids_of(entry):
            return True
    return False


def _uids_of(pid: str) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return [int(field) for field in line.split()[1:]]
    except OSError:  # it ended meanwhile
        pass
    return []


def _id_map(path: str) -> list[range]:
    """The ids of this user namespace (the ``inside`` column of a uid_map or gid_map)."""
    with open(path) as handle:
        rows = [line.split() for line in handle if line.strip()]
    return [range(int(inside), int(inside) + int(count)) for inside, _, count in rows]


def _inside(uid: int, ranges: list[range]) -> bool:
    return any(uid in ids for ids in ranges)
