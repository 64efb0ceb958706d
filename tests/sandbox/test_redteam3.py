"""Regression tests for the third red-team pass on genprm.sandbox (issue 23), as root, in the
default mode and under bubblewrap: kernel keyrings, new namespaces, Linux AIO, vsock and uevent
sockets are refused by the snippet's seccomp filter, the host's session keyring is out of
reach, threads and forks still work, and the worker that served a refused call serves on.
"""

from __future__ import annotations

import ctypes
import json
import os

import pytest

from genprm.sandbox import Sandbox
from tests.support.processes import live_pids_of, snippet_uids, wait_for

MACHINE = os.uname().machine
# Numbered independently of the module under test.
NUMBERS = {
    "x86_64": {
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "io_setup": 206, "clone": 56, "clone3": 435, "socket": 41,
    },
    "aarch64": {
        "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97,
        "io_setup": 0, "clone": 220, "clone3": 435, "socket": 198,
    },
}.get(MACHINE)  # fmt: skip
HOST_KEY = b"genprm-host-secret"
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NUMBERS is None, reason=f"no syscall numbers for {MACHINE}"),
]

# Each probe: "ok" when the call succeeded, else the errno's name. A clone that succeeds makes a
# child that exits at once.
PROBES = r"""
import ctypes, errno, json, os, struct, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
N = NUMBERS
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
SESSION, USER = -3, -4  # KEY_SPEC_SESSION_KEYRING, KEY_SPEC_USER_KEYRING


def call(name, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(N[name]), *args)
    if result == 0 and name.startswith("clone"):
        os._exit(0)  # the child of a clone that went through
    if result > 0 and name.startswith("clone"):
        os.waitpid(result, 0)
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]


clone_args = struct.pack("8Q", CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0)
context = ctypes.c_ulong(0)
try:
    with open("/proc/keys") as keys:
        listed = HOST_KEY.decode() in keys.read()
except OSError:
    listed = False
threads = []
thread = threading.Thread(target=lambda: threads.append("ran"))
thread.start()
thread.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
print(json.dumps({
    "add_key": call("add_key", b"user", b"genprm-left-behind", b"x", 1, USER),
    "request_key": call("request_key", b"user", HOST_KEY, None, 0),
    "keyctl": call("keyctl", 0, SESSION, 0),  # KEYCTL_GET_KEYRING_ID
    "unshare": call("unshare", CLONE_NEWUSER),
    "clone": call("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "clone3": call("clone3", clone_args, len(clone_args)),
    "io_setup": call("io_setup", 128, ctypes.byref(context)),
    "vsock": call("socket", 40, 1, 0),  # AF_VSOCK, SOCK_STREAM
    "uevents": call("socket", 16, 3, 15),  # AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT
    "netlink_route": call("socket", 16, 3, 0),  # NETLINK_ROUTE stays allowed
    "host_key_listed": listed,
    "thread": threads,
    "fork": os.waitstatus_to_exitcode(status),
}))
""".replace("NUMBERS", repr(NUMBERS)).replace("HOST_KEY", repr(HOST_KEY))

REFUSED = {
    "add_key": "EPERM", "request_key": "EPERM", "keyctl": "EPERM", "unshare": "EPERM",
    "clone": "EPERM", "clone3": "ENOSYS", "io_setup": "EPERM",
    "vsock": "EPERM", "uevents": "EPERM",
}  # fmt: skip


@pytest.fixture(scope="module")
def host_session_key():
    """A key in a session keyring of this process, which the sandbox's workers inherit (as
    they would a PAM login's or a container's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    numbers = {name: ctypes.c_long(number) for name, number in NUMBERS.items()}
    joined = libc.syscall(numbers["keyctl"], ctypes.c_long(1), b"genprm-tests")
    if joined < 0:
        pytest.skip(f"no session keyring here (errno {ctypes.get_errno()})")
    key = libc.syscall(
        numbers["add_key"], b"user", HOST_KEY, b"hunter2", ctypes.c_long(7), ctypes.c_long(-3)
    )
    assert key > 0, ctypes.get_errno()
    yield key
    libc.syscall(numbers["keyctl"], ctypes.c_long(3), ctypes.c_long(key))  # KEYCTL_REVOKE


def probe(sandbox: Sandbox) -> dict:
    workers = sandbox.worker_pids()
    result = sandbox.run(PROBES, timeout=10)
    assert result.status == "ok", result
    report = json.loads(result.stdout)
    assert sandbox.worker_pids() == workers, "a worker was replaced"
    uids = snippet_uids(sandbox)
    assert wait_for(lambda: not live_pids_of(uids)), live_pids_of(uids)
    return report


def check(report: dict) -> None:
    assert {name: report[name] for name in REFUSED} == REFUSED
    assert report["netlink_route"] == "ok"  # the filter looks at the protocol, not all netlink
    assert report["host_key_listed"] is False
    assert (report["thread"], report["fork"]) == (["ran"], 7)  # clone3's ENOSYS falls back


def test_keys_namespaces_aio_vsock_and_uevents_are_refused(host_session_key):
    with Sandbox(workers=1) as sandbox:
        check(probe(sandbox))
        check(probe(sandbox))  # the same worker, after a snippet that tried them all


@pytest.mark.bwrap
def test_keys_namespaces_aio_vsock_and_uevents_are_refused_under_bwrap(host_session_key):
    with Sandbox(workers=1, bwrap=True) as sandbox:
        check(probe(sandbox))
