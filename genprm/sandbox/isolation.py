"""Linux isolation primitives the sandbox worker uses (ctypes: Python 3.11 has no os.unshare)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
# statvfs flags with the same value as the mount flag
_KEPT_FLAGS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
# Directories any user may write to; each snippet gets its own empty, size-capped copy.
SCRATCH_MOUNTS = {"/tmp": "64m", "/var/tmp": "16m", "/dev/shm": "16m"}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, call: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{call}: {os.strerror(error)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option: int, value: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), 0, 0, 0), "prctl")


def enter_private_network() -> None:
    """A new, empty network namespace (only a down loopback): nothing to connect to.

    Root may unshare it directly; an ordinary user first enters a new user namespace that maps
    only their own uid and gid, which also grants the capabilities to make PID namespaces."""
    if os.geteuid() == 0:
        unshare(CLONE_NEWNET)
        return
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET)
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def works_in_child(setup) -> bool:
    """Whether ``setup()`` succeeds here, tried in a throw-away child."""
    pid = os.fork()
    if pid == 0:
        try:
            setup()
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def scratch_shadowed(paths) -> list[str]:
    """The outermost of ``paths`` (existing folders) that a scratch mount would hide, such as a
    virtual environment in a checkout under /tmp."""
    folders = {os.path.abspath(path) for path in paths if os.path.isdir(path)}
    inside = sorted(p for p in folders if p.startswith(tuple(t + "/" for t in SCRATCH_MOUNTS)))
    return [p for i, p in enumerate(inside) if not any(p.startswith(q + "/") for q in inside[:i])]


def private_scratch(owner: int, keep: list[str] = ()) -> None:
    """A private mount namespace whose /tmp, /var/tmp and /dev/shm are fresh tmpfs owned by
    ``owner``: whatever a snippet writes there disappears with it. The folders in ``keep``
    (from ``scratch_shadowed``) stay visible there, read-only."""
    unshare(CLONE_NEWNS)
    _check(_libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None), "mount")
    originals = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keep}
    for target, size in SCRATCH_MOUNTS.items():
        if os.path.isdir(target):
            options = f"size={size},mode=700,uid={owner},gid={owner}".encode()
            flags = ctypes.c_ulong(_MS_NOSUID | _MS_NODEV)
            _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options), "mount")
    for path, fd in originals.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        source = f"/proc/self/fd/{fd}".encode()
        bind = ctypes.c_ulong(_MS_BIND | _MS_REC)
        _check(_libc.mount(source, path.encode(), None, bind, None), "mount")
        # A remount must repeat the flags a user namespace inherited locked from the original.
        mounted = os.statvfs(path).f_flag
        inherited = mounted & _KEPT_FLAGS
        relatime = _MS_RELATIME if mounted & os.ST_RELATIME else 0
        flags = ctypes.c_ulong(_MS_BIND | _MS_REMOUNT | _MS_RDONLY | inherited | relatime)
        _check(_libc.mount(None, path.encode(), None, flags, None), "mount")
        os.close(fd)


def drop_capabilities() -> None:
    """No capabilities and no way to regain any (setuid binaries, file capabilities)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]

    prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), (Data * 2)()), "capset")


def drop_to_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def set_limits(
    address_space: int, cpu_seconds: int, processes: int, file_bytes: int, files: int
) -> None:
    for limit, value in (
        (resource.RLIMIT_AS, address_space),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    # Past RLIMIT_FSIZE a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def refuse_sockets() -> None:
    """Fallback when no network namespace is possible: sockets cannot be created from Python."""

    def refused(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    class RefusedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refused()

    socket.socket = RefusedSocket
    socket.create_connection = socket.socketpair = socket.fromfd = refused
    import _socket

    _socket.socket = RefusedSocket


def processes_of(uid: int) -> int:
    """How many processes run as ``uid`` (RLIMIT_NPROC counts them all, not just ours)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def kill_all_of(uid: int) -> None:
    """SIGKILL every process running as ``uid``, from a helper that takes that uid (root only):
    ``kill(-1)`` reaches processes that left the snippet's process group and session. Only for
    a uid this worker holds from ``uids.UidRange.reserve``, so that every such process is ours."""
    pid = os.fork()
    if pid == 0:
        try:
            drop_to_uid(uid)
            for _ in range(100):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state letter, parent pid)`` of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """Pids below ``root`` in the process tree (orphans of a subreaper are its children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
