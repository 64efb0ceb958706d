"""Linux isolation primitives the sandbox worker uses (ctypes: Python 3.11 has no os.unshare)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, call: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{call}: {os.strerror(error)}")


def unshare(flags: int) -> None:
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option: int, value: int = 0) -> None:
    check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), 0, 0, 0), "prctl")


def set_name(name: str) -> None:
    """The process name ``ps`` and /proc/PID/stat show (at most 15 bytes)."""
    check(libc.prctl(ctypes.c_int(PR_SET_NAME), ctypes.c_char_p(name.encode()), 0, 0, 0), "prctl")


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


def drop_capabilities() -> None:
    """No capabilities and no way to regain any (setuid binaries, file capabilities)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]

    prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    check(libc.capset(ctypes.byref(header), (Data * 2)()), "capset")


def drop_to_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def set_limits(address_space: int, processes: int, file_bytes: int, files: int) -> None:
    """Every rlimit but CPU time (it depends on the request's timeout)."""
    for limit, value in (
        (resource.RLIMIT_AS, address_space),
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


def proc_pid(pidfd: int) -> int:
    """The pid of the process behind ``pidfd`` as /proc names it (our /proc may belong to a PID
    namespace outside our own, where the process has another pid)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as handle:
        for line in handle:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError(f"no Pid in /proc/self/fdinfo/{pidfd}: this kernel's pidfds are too old")


def live_tree(pid: int) -> list[int]:
    """The live processes below ``pid`` (pids as /proc names them, zombies left out), from the
    children lists of its threads: for the init of a PID namespace, every other process in it."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:  # gone meanwhile
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                continue
            found += [c for c in children if (proc_stat(c) or ("X",))[0] not in ("Z", "X")]
            stack += children
    return found


def kill_proc(pid: int) -> None:
    """SIGKILL the process /proc names ``pid`` (through a descriptor of its /proc folder, so that
    a pid freed and reused meanwhile is not hit)."""
    try:
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # gone
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)
