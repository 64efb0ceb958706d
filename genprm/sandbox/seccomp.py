"""The snippet's seccomp filter (ctypes: Python 3.11 has no binding): no setuid or setgid bits,
no kernel keys, no new namespaces, no Linux AIO, no vsock and no kernel device events.

A snippet must not leave a setuid or setgid file behind anywhere, not even on its private
tmpfs: such a file would run with the snippet's uid or gid for whoever executes it later.
Dropped capabilities already keep the snippet from making one owned by anyone else; this filter
keeps it from making one at all, whatever its owner. The rest is a deny-list like Docker's
default profile: kernel keyrings outlive the snippet (and may hold the host's secrets), a user
namespace gives back every capability inside it, Linux AIO events and vsock sockets are
machine-wide (vsock is not scoped to a network namespace), and uevent sockets hear the host's
devices.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .isolation import PR_SET_NO_NEW_PRIVS, check, libc, prctl

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
# Classic BPF opcodes: load a 32-bit word of seccomp_data, jump on a constant, return.
_LOAD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ, _JGE, _JSET = 0x15, 0x35, 0x45  # BPF_JMP | BPF_JEQ / BPF_JGE / BPF_JSET | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
# struct seccomp_data: int nr, u32 arch, u64 instruction_pointer, u64 args[6] (little-endian,
# so the low 32 bits of args[i], which hold a mode_t, are at 16 + 8 * i).
_NR, _ARCH, _ARGS = 0, 4, 16
SETID_BITS = 0o6000  # S_ISUID | S_ISGID
# Syscalls whose arguments the filter cannot inspect (openat2's mode is in a struct it cannot
# read; an io_uring can open and mkdir files without syscalls). ENOSYS, as from an older kernel,
# makes libc and Python fall back to the plain syscalls; neither needs these.
OPENAT2, IO_URING_SETUP = 437, 425
CLONE3 = 435  # its flags are in a struct the filter cannot read: ENOSYS, and libc uses clone
# Any CLONE_NEW* flag that clone(2) takes (its low byte is the exit signal, not CLONE_NEWTIME).
CLONE_NEW_FLAGS = 0x7E020000
AF_NETLINK, AF_VSOCK, NETLINK_KOBJECT_UEVENT = 16, 40, 15
KEYCTL_JOIN_SESSION_KEYRING = 1
# Per machine: the audit arch of its native syscalls and {syscall number: index of the mode
# argument}. open and openat refuse the bits even without O_CREAT or O_TMPFILE, where the
# kernel ignores the mode: libc passes 0 then, so only a hand-made call meets the refusal.
ARCHES = {
    "x86_64": (
        0xC000003E,
        {
            90: 1,  # chmod
            91: 1,  # fchmod
            268: 2,  # fchmodat
            452: 2,  # fchmodat2
            85: 1,  # creat
            2: 2,  # open
            257: 3,  # openat
            83: 1,  # mkdir
            258: 2,  # mkdirat
            133: 1,  # mknod
            259: 2,  # mknodat
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            52: 1,  # fchmod
            53: 2,  # fchmodat
            452: 2,  # fchmodat2
            56: 3,  # openat
            34: 2,  # mkdirat
            33: 2,  # mknodat
        },
    ),
}
# Per machine: the syscalls refused with EPERM whatever their arguments, and the numbers of
# clone (refused with a CLONE_NEW* flag) and socket (refused for vsock and uevents).
REFUSED = {
    "x86_64": (
        {
            "add_key": 248, "request_key": 249, "keyctl": 250,
            "unshare": 272, "setns": 308,
            "io_setup": 206, "io_submit": 209,
        },
        56,
        41,
    ),
    "aarch64": (
        {
            "add_key": 217, "request_key": 218, "keyctl": 219,
            "unshare": 97, "setns": 268,
            "io_setup": 0, "io_submit": 2,
        },
        220,
        198,
    ),
}  # fmt: skip
# On x86_64, syscall numbers with this bit are the x32 ABI's, reported with the native arch.
X32_SYSCALL_BIT = 0x40000000


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def _filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program for ``machine``, as ``(code, jump if true, jump if false, k)``."""
    arch, modes = ARCHES[machine]
    refuse = (_RETURN, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM)
    allow = (_RETURN, 0, 0, SECCOMP_RET_ALLOW)
    program = [
        (_LOAD, 0, 0, _ARCH),
        (_JEQ, 1, 0, arch),
        (_RETURN, 0, 0, SECCOMP_RET_KILL_PROCESS),  # a foreign ABI (i386 via int 0x80, arm32)
        (_LOAD, 0, 0, _NR),
    ]
    if machine == "x86_64":
        program += [(_JGE, 0, 1, X32_SYSCALL_BIT), refuse]
    for number in (OPENAT2, IO_URING_SETUP, CLONE3):
        program += [(_JEQ, 0, 1, number), (_RETURN, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS)]
    refused, clone, socket = REFUSED[machine]
    for number in refused.values():
        program += [(_JEQ, 0, 1, number), refuse]
    program += [
        (_JEQ, 0, 4, clone),
        (_LOAD, 0, 0, _ARGS),  # the flags
        (_JSET, 0, 1, CLONE_NEW_FLAGS),
        refuse,
        allow,
        (_JEQ, 0, 8, socket),
        (_LOAD, 0, 0, _ARGS),  # the domain
        (_JEQ, 0, 1, AF_VSOCK),
        refuse,
        (_JEQ, 0, 3, AF_NETLINK),
        (_LOAD, 0, 0, _ARGS + 16),  # the protocol
        (_JEQ, 0, 1, NETLINK_KOBJECT_UEVENT),
        refuse,
        allow,
    ]
    for number, argument in modes.items():
        program += [
            (_JEQ, 0, 4, number),
            (_LOAD, 0, 0, _ARGS + 8 * argument),
            (_JSET, 0, 1, SETID_BITS),
            refuse,
            allow,
        ]
    return program + [allow]


def confine_syscalls() -> None:
    """From now on, this thread and every process it starts (across exec, for good) cannot
    create a file, folder or node with the setuid or setgid bit, nor give those bits to one:
    chmod, fchmod, fchmodat(2), creat, open(at), mkdir(at) and mknod(at) fail with EPERM when
    their mode has either bit. add_key, request_key, keyctl, unshare, setns, io_setup and
    io_submit fail with EPERM, and so do clone with any CLONE_NEW* flag and socket for
    AF_VSOCK or a NETLINK_KOBJECT_UEVENT socket; openat2, io_uring_setup and clone3 fail with
    ENOSYS (libc falls back to openat and clone); x32 syscalls fail with EPERM; a syscall of a
    foreign ABI (i386, arm32) kills the process. Everything else is unchanged. First it leaves
    the session keyring it inherited (the host's, on a PAM login or in a container) for a new,
    empty one. Sets no_new_privs first, which the kernel requires without CAP_SYS_ADMIN.

    Raises OSError: ENOTSUP on a machine other than 64-bit x86_64 or aarch64 (the caller can
    then report weaker isolation), or the kernel's error if it cannot install the filter.
    The filter applies to the calling thread only: call it in a single-threaded process (a
    fresh fork), as the sandbox does.
    """
    machine = os.uname().machine if ctypes.sizeof(ctypes.c_void_p) == 8 else "32-bit"
    if machine not in ARCHES:
        raise OSError(errno.ENOTSUP, f"no seccomp filter for this machine ({machine})")
    _join_fresh_session_keyring(REFUSED[machine][0]["keyctl"])
    program = _filter(machine)
    instructions = (_Instruction * len(program))(*program)
    fprog = _Program(len(instructions), instructions)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    result = libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0
    )
    check(result, "prctl(PR_SET_SECCOMP)")


def _join_fresh_session_keyring(keyctl: int) -> None:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new anonymous session keyring, so that the
    inherited one is no longer possessed (not even listed in /proc/keys). Best effort: where it
    fails (no keys in the kernel, the uid's key quota), the filter still refuses every key
    syscall."""
    libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None)
