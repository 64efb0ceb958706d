"""What a snippet's own mount namespace shows: a fresh, size- and inode-capped tmpfs over every
world-writable folder it could reach (found by searching the file systems, not listed by hand),
and a /proc of its own PID namespace.

A world-writable folder is a place where one snippet could leave something for the next one or
for the host (files, a setuid binary, hundreds of MB on the host's disk); on its private tmpfs
whatever it writes disappears with it. The search skips the kernel's own views (/proc, /sys) and
network or FUSE file systems, which are reported instead (a slow or huge remote tree is not
walked on every start): run the workers in bubblewrap where those matter.
"""

from __future__ import annotations

import ctypes
import os
import re

from .isolation import CLONE_NEWNS, check, libc, unshare

WORKDIR = "/tmp"  # the snippet's working directory, private even where it is not world-writable
SIZES = {WORKDIR: "64m"}
DEFAULT_SIZE = "16m"
MAX_INODES = 4096  # per tmpfs: a directory loop stops here instead of growing kernel memory
SKIPPED_TYPES = ("proc", "sysfs")
NETWORK_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs",
                 "beegfs", "afs", "9p", "fuse")  # fmt: skip
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
# statvfs flags with the same value as the mount flag
_KEPT_FLAGS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME


def mount_types(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Mount point -> file system type (the last mount wins where several share a point)."""
    types = {}
    with open(mountinfo) as handle:
        for line in handle:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040: " "
            types[point] = fields[fields.index("-") + 1]
    return types


def world_writable(root: str = "/") -> tuple[list[str], list[str]]:
    """The outermost world-writable folders under ``root`` on writable mounts, reachable by a
    user who owns nothing (every folder above has the others-x bit), and the network mounts
    that were not searched."""
    types = mount_types()
    found, unsearched, stack = [], [], [root]
    while stack:
        folder = stack.pop()
        kind = types.get(folder, "")
        if kind in SKIPPED_TYPES:
            continue
        if kind.split(".")[0] in NETWORK_TYPES:
            unsearched.append(folder)
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
                if mode & 0o002:
                    if not os.statvfs(entry.path).f_flag & os.ST_RDONLY:
                        found.append(entry.path)
                elif mode & 0o001:
                    stack.append(entry.path)
            except OSError:
                continue
    return sorted(found), sorted(unsearched)


def scratch_folders(found: list[str]) -> list[str]:
    """The folders that get a private tmpfs: the working directory and ``found``."""
    folders = {WORKDIR, *found}
    return sorted(p for p in folders if not any(p.startswith(q + "/") for q in folders))


def shadowed(paths, folders) -> list[str]:
    """The outermost of ``paths`` (existing folders) that a scratch mount over ``folders`` would
    hide, such as a virtual environment in a checkout under /tmp."""
    existing = {os.path.abspath(path) for path in paths if os.path.isdir(path)}
    inside = sorted(p for p in existing if p.startswith(tuple(f + "/" for f in folders)))
    return [p for i, p in enumerate(inside) if not any(p.startswith(q + "/") for q in inside[:i])]


def private_mounts(owner: int, folders: list[str], keep: list[str], own_proc: bool) -> None:
    """Enter a private mount namespace: a fresh tmpfs owned by ``owner`` over each of
    ``folders`` (nosuid, nodev), the folders in ``keep`` (from :func:`shadowed`) still visible
    there read-only, and with ``own_proc`` a /proc of the current PID namespace in which
    processes of other users are invisible."""
    unshare(CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    originals = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keep}
    for folder in folders:
        if os.path.isdir(folder):
            size = SIZES.get(folder, DEFAULT_SIZE)
            options = f"size={size},nr_inodes={MAX_INODES},mode=700,uid={owner},gid={owner}"
            _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for path, fd in originals.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        # A remount must repeat the flags a user namespace inherited locked from the original.
        mounted = os.statvfs(path).f_flag
        relatime = MS_RELATIME if mounted & os.ST_RELATIME else 0
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | (mounted & _KEPT_FLAGS) | relatime
        _mount(None, path, None, flags)
        os.close(fd)
    if own_proc:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")


def _mount(source, target, kind, flags, options=None) -> None:
    encoded = [None if s is None else s.encode() for s in (source, target, kind, options)]
    result = libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3])
    check(result, f"mount {target}")
