"""The seccomp filter that refuses setuid and setgid bits, tried in forked children so that it
never lands in the pytest process."""

import ctypes
import errno
import mmap
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

import pytest

from genprm.sandbox.seccomp import confine_syscalls

MACHINE = os.uname().machine
AT_FDCWD = -100
CREATE = os.O_CREAT | os.O_WRONLY | os.O_EXCL
SETID_MODES = [0o4755, 0o2755, 0o6755]
# The guarded syscalls, numbered independently of the module under test.
SYSCALLS = {
    "x86_64": {
        "chmod": 90,
        "fchmod": 91,
        "fchmodat": 268,
        "fchmodat2": 452,
        "creat": 85,
        "open": 2,
        "openat": 257,
        "mkdir": 83,
        "mkdirat": 258,
        "mknod": 133,
        "mknodat": 259,
    },
    "aarch64": {
        "fchmod": 52,
        "fchmodat": 53,
        "fchmodat2": 452,
        "openat": 56,
        "mkdirat": 34,
        "mknodat": 33,
    },
}.get(MACHINE, {})
OPENAT2, IO_URING_SETUP, X32_SYSCALL_BIT = 437, 425, 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

pytestmark = pytest.mark.skipif(not SYSCALLS, reason=f"no seccomp filter for {MACHINE}")


def in_child(action, filtered: bool = True):
    """What ``action()`` returns in a forked child, after ``confine_syscalls()`` when
    ``filtered``; the errno's name (``"EPERM"``) if it raised OSError; the signal's name
    (``"SIGSYS"``) if the child was killed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.umask(0)  # modes below are exactly the ones asked for
            try:
                if filtered:
                    confine_syscalls()
                outcome = ("returned", action())
            except OSError as error:
                outcome = ("returned", errno.errorcode[error.errno])
            except BaseException as error:
                outcome = ("raised", repr(error))
            with os.fdopen(write, "wb") as pipe:
                pickle.dump(outcome, pipe)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        code = os.waitstatus_to_exitcode(status)
        assert code < 0, f"the child exited with {code} and no outcome"
        return signal.Signals(-code).name
    kind, value = pickle.loads(data)
    assert kind == "returned", f"the child raised {value}"
    return value


def syscall(number: int, *args) -> int:
    """A raw syscall: its result, or OSError."""
    result = _libc.syscall(
        ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args)
    )
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def raw(name: str, path, mode: int) -> None:
    """The syscall ``name`` of this machine on ``path`` (existing for the chmods), made directly."""
    if name == "fchmod":
        fd = os.open(path, os.O_RDONLY)
        try:
            syscall(SYSCALLS[name], fd, mode)
        finally:
            os.close(fd)
        return
    p = os.fsencode(path)
    arguments = {
        "chmod": (p, mode),
        "fchmodat": (AT_FDCWD, p, mode),
        "fchmodat2": (AT_FDCWD, p, mode, 0),
        "creat": (p, mode),
        "open": (p, CREATE, mode),
        "openat": (AT_FDCWD, p, CREATE, mode),
        "mkdir": (p, mode),
        "mkdirat": (AT_FDCWD, p, mode),
        "mknod": (p, stat.S_IFREG | mode, 0),
        "mknodat": (AT_FDCWD, p, stat.S_IFREG | mode, 0),
    }[name]
    syscall(SYSCALLS[name], *arguments)


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("name", list(SYSCALLS))
def test_every_guarded_syscall_refuses_setid_bits(tmp_path, name):
    path = tmp_path / "target"
    changes = name.startswith(("chmod", "fchmod"))
    if changes:
        path.write_text("")
        path.chmod(0o700)
    for mode in SETID_MODES:
        assert in_child(lambda: raw(name, path, mode)) == "EPERM", oct(mode)
        assert (mode_of(path) == 0o700) if changes else not os.path.lexists(path)
    assert in_child(lambda: raw(name, path, 0o755)) is None
    assert mode_of(path) == 0o755
    # Unfiltered, the same call is accepted: the filter is what refuses it.
    if not changes:
        os.unlink(path) if path.is_file() else os.rmdir(path)
    assert in_child(lambda: raw(name, path, 0o4755), filtered=False) is None


def _fchmod(path, mode):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _chmod_in_folder(path, mode):  # fchmodat
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chmod(path.name, mode, dir_fd=fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("chmod", [os.chmod, _fchmod, _chmod_in_folder])
def test_python_chmods_refuse_setid_bits(tmp_path, chmod):
    path = tmp_path / "script"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o700)
    for mode in SETID_MODES:
        assert in_child(lambda: chmod(path, mode)) == "EPERM"
        assert mode_of(path) == 0o700
    assert in_child(lambda: os.chmod(path, 0o755)) is None
    assert mode_of(path) == 0o755


@pytest.mark.parametrize(
    "create",
    [
        lambda path, mode: os.close(os.open(path, CREATE, mode)),
        lambda path, mode: os.mkdir(path, mode),
        lambda path, mode: os.mknod(path, stat.S_IFREG | mode),
        lambda path, mode: os.mknod(path, stat.S_IFIFO | mode),
    ],
    ids=["open", "mkdir", "mknod", "mkfifo"],
)
def test_python_creations_refuse_setid_bits(tmp_path, create):
    path = tmp_path / "new"
    for mode in SETID_MODES:
        assert in_child(lambda: create(path, mode)) == "EPERM"
        assert not os.path.lexists(path)
    assert in_child(lambda: create(path, 0o644)) is None
    assert mode_of(path) == 0o644


def test_unnamed_temporary_files_refuse_setid_bits(tmp_path):
    def create(mode):
        os.close(os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, mode))

    assert in_child(lambda: create(0o4700)) == "EPERM"
    assert in_child(lambda: create(0o600)) is None


def test_programs_started_later_are_refused_too(tmp_path):
    """The filter survives fork and exec: neither chmod(1) nor a new Python can set the bits."""
    path = tmp_path / "script"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o700)
    chmod = [shutil.which("chmod"), "4755", str(path)]
    python = [sys.executable, "-c", "import os, sys; os.chmod(sys.argv[1], 0o2755)", str(path)]

    def run(command):
        done = subprocess.run(command, capture_output=True, text=True)
        return done.returncode, done.stderr

    code, stderr = in_child(lambda: run(chmod))
    assert code != 0
    code, stderr = in_child(lambda: run(python))
    assert code != 0 and "PermissionError" in stderr
    assert mode_of(path) == 0o700
    assert in_child(lambda: run(python), filtered=False)[0] == 0


def test_ordinary_file_work_still_works(tmp_path):
    def work():
        os.makedirs(tmp_path / "a" / "b", mode=0o750)
        (tmp_path / "a" / "b" / "f.txt").write_text("hello")
        os.rename(tmp_path / "a" / "b" / "f.txt", tmp_path / "a" / "g.txt")
        shutil.copy2(tmp_path / "a" / "g.txt", tmp_path / "a" / "h.txt")
        os.chmod(tmp_path / "a" / "h.txt", 0o700)
        os.chmod(tmp_path / "a", 0o1777)  # the sticky bit is not refused
        with tempfile.NamedTemporaryFile(dir=tmp_path) as handle:
            handle.write(b"x")
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            os.mkfifo(os.path.join(folder, "pipe"))
        text = (tmp_path / "a" / "h.txt").read_text()
        os.unlink(tmp_path / "a" / "g.txt")
        shutil.rmtree(tmp_path / "a" / "b")
        echoed = subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout
        return text, echoed, sorted(os.listdir(tmp_path / "a")), mode_of(tmp_path / "a")

    assert in_child(work) == ("hello", "hi\n", ["h.txt"], 0o1777)


def test_uninspectable_syscalls_are_missing(tmp_path):
    """openat2 keeps its mode in a struct, io_uring opens files without syscalls: ENOSYS."""
    how = (ctypes.c_uint64 * 3)(os.O_CREAT | os.O_WRONLY, 0o4755, 0)  # flags, mode, resolve
    path = os.fsencode(tmp_path / "new")
    openat2 = (OPENAT2, AT_FDCWD, path, how, ctypes.sizeof(how))
    assert in_child(lambda: syscall(*openat2)) == "ENOSYS"
    assert not os.path.lexists(path)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    assert in_child(lambda: syscall(IO_URING_SETUP, 1, params)) == "ENOSYS"
    # What Python itself does still works; openat2 itself does, unfiltered.
    assert in_child(lambda: open(tmp_path / "plain", "w").close()) is None
    assert isinstance(in_child(lambda: syscall(*openat2), filtered=False), int)


@pytest.mark.skipif(MACHINE != "x86_64", reason="x32 and i386 are x86_64's other ABIs")
def test_other_abis_cannot_bypass_the_filter(tmp_path):
    path = tmp_path / "script"
    path.write_text("")
    x32_chmod = X32_SYSCALL_BIT | SYSCALLS["chmod"]
    assert in_child(lambda: syscall(x32_chmod, os.fsencode(path), 0o4755)) == "EPERM"
    assert in_child(lambda: syscall(X32_SYSCALL_BIT | 39)) == "EPERM"  # x32 getpid

    def i386_getpid():  # mov eax, 20 (getpid); int 0x80; ret
        code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        code.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")
        address = ctypes.addressof(ctypes.c_char.from_buffer(code))
        return ctypes.CFUNCTYPE(ctypes.c_int)(address)() == os.getpid()

    if in_child(i386_getpid, filtered=False) is not True:
        pytest.skip("this kernel runs no i386 syscalls")
    assert in_child(i386_getpid) == "SIGSYS"


def test_an_unknown_machine_is_an_error(monkeypatch):
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((*real[:4], "riscv64")))
    assert in_child(confine_syscalls, filtered=False) == "ENOTSUP"


SETNS = {"x86_64": 308, "aarch64": 268}.get(MACHINE)
CLONE_NEWNET = 0x40000000


@pytest.mark.root
def test_setns_is_refused_even_where_the_process_could_join():
    def join_own_network_namespace():
        with open("/proc/self/ns/net") as ns:
            return syscall(SETNS, ns.fileno(), CLONE_NEWNET)

    assert in_child(join_own_network_namespace, filtered=False) == 0  # root may join it
    assert in_child(join_own_network_namespace) == "EPERM"
