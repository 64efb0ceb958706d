"""Regression tests for the red-team pass on genprm.sandbox (root: a reserved uid per worker).

One section per hole: memory of a whole snippet tree, IPC objects, world-writable folders, the
status pipe (flooded, unparsable), memory of earlier snippets, host processes, lone surrogates,
tmpfs inodes and timeouts. Each hostile case also checks that nothing of the snippet is left:
no live process under the snippet uids (not a process-tree check: the workers legitimately keep
helper processes of their own) and the case's own residue (IPC objects, files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import stat
import subprocess
import sys
import time
import uuid

import pytest

from genprm.sandbox import MAX_TIMEOUT_S, Sandbox, worker
from tests.support.processes import alive, live_pids_of, snippet_uids, wait_for

TIMEOUT = 2.0
pytestmark = [pytest.mark.root, pytest.mark.sandbox(timeout=TIMEOUT)]
LIMIT = 20_000  # the longest feedback / error message a result may carry


# ----------------------------------------------------------------------------- helpers


def assert_aftermath(sandbox: Sandbox, workers_before: list[int]) -> None:
    """The same workers serve, nothing runs under a snippet uid, the next snippet works."""
    assert sandbox.worker_pids() == workers_before, "a worker was replaced"
    uids = snippet_uids(sandbox)
    assert wait_for(lambda: not live_pids_of(uids)), live_pids_of(uids)
    result = sandbox.run("print(1)")
    assert (result.status, result.stdout) == ("ok", "1\n"), result
    assert sandbox.worker_pids() == workers_before


def run_json(sandbox: Sandbox, code: str, timeout: float | None = None) -> dict:
    """Run a snippet that prints one JSON object; that object."""
    result = sandbox.run(code, timeout=timeout)
    assert result.status == "ok", result
    return json.loads(result.stdout)


def run_on(sandbox: Sandbox, code: str, wanted, tries: int = 8) -> dict:
    """Run ``code`` (which reports its ``uid``) until it lands on a worker whose snippet uid
    satisfies ``wanted``; each worker has a uid of its own."""
    for _ in range(tries):
        report = run_json(sandbox, code)
        if wanted(report["uid"]):
            return report
    raise AssertionError("no run landed on the wanted worker")


# SysV IPC and POSIX message queues through libc, for snippets and for the host alike (the
# host execs it too). probe() opens without creating: "found" or the errno's name.
IPC_LIB = """
import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
if not hasattr(libc, "mq_open"):
    libc = ctypes.CDLL("librt.so.1", use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
libc.mq_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]
libc.mq_unlink.argtypes = [ctypes.c_char_p]
IPC_CREAT, IPC_RMID = 0o1000, 0

def check(value, call):
    if value == -1:
        raise OSError(ctypes.get_errno(), call)
    return value

def seen(value):
    return "found" if value >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

def probe(key, name):
    found = {"shm": seen(libc.shmget(key, 0, 0)), "msg": seen(libc.msgget(key, 0))}
    queue = libc.mq_open(name.encode(), os.O_RDONLY, 0, None)
    found["mq"] = seen(queue)
    if queue >= 0:
        libc.mq_close(queue)
    return found

def create(key, name):
    check(libc.shmget(key, 1 << 20, IPC_CREAT | 0o666), "shmget")
    queue_id = check(libc.msgget(key, IPC_CREAT | 0o666), "msgget")
    check(libc.msgsnd(queue_id, struct.pack("l", 1) + b"hello", 5, 0), "msgsnd")
    queue = check(libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o666, None), "mq_open")
    check(libc.mq_send(queue, b"hello", 5, 0), "mq_send")

def remove(keys, name=None):
    for key in keys:
        if (shm := libc.shmget(key, 0, 0)) >= 0:
            libc.shmctl(shm, IPC_RMID, None)
        if (msg := libc.msgget(key, 0)) >= 0:
            libc.msgctl(msg, IPC_RMID, None)
    if name:
        libc.mq_unlink(name.encode())
"""


def host_ipc() -> dict:
    namespace: dict = {}
    exec(IPC_LIB, namespace)  # noqa: S102 - the same code the snippets run
    return namespace


def sysv_keys(kind: str) -> set[int]:
    """Keys of the host's SysV shared memory segments ("shm") or message queues ("msg")."""
    with open(f"/proc/sysvipc/{kind}") as listing:
        return {int(line.split()[0]) for line in list(listing)[1:] if line.strip()}


def ipc_key() -> int:
    return random.SystemRandom().randrange(1 << 24, 1 << 30)


def world_writable_dirs() -> list[str]:
    """Every folder of the host that any user may write to and reach: walk from /, past the
    pseudo file systems, into folders others may search, collecting those others may write
    (and not below them: anything there, made by anyone at any time, lives in that folder)."""
    pseudo = {"proc", "sysfs", "cgroup", "cgroup2", "devpts"}
    skipped = set()
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[fields.index("-") + 1] in pseudo:
                skipped.add(fields[4])
    found, stack, seen = [], ["/"], set()
    while stack:
        path = stack.pop()
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if info.st_mode & stat.S_IWOTH:
            found.append(path)  # what is below it is anyone's: a snippet's own copy of it
            continue
        if path in skipped or not info.st_mode & stat.S_IXOTH:
            continue
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            stack += [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    return sorted(found)


@pytest.fixture(scope="module")
def single():
    with Sandbox(workers=1, timeout=TIMEOUT) as shared:
        yield shared


@pytest.fixture(scope="module")
def small():
    with Sandbox(workers=1, memory_mb=256, timeout=TIMEOUT) as shared:
        yield shared


@pytest.fixture(scope="module")
def boxed():
    with Sandbox(workers=1, timeout=TIMEOUT, bwrap=True) as shared:
        yield shared


# ----------------------------------------------------------------------------- 1. total memory

FORKED_TOUCHERS = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        try:
            block = b"\\x01" * (150 << 20)  # written, so really resident
            time.sleep(1)
        finally:
            os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("the children are done")
"""


def test_isolation_reports_a_memory_cgroup(small):
    assert small.isolation["memory_cgroup"] is True


def test_forked_children_count_against_one_memory_limit(small):
    """4 x 150 MB, each child under the 256 MB limit on its own, together far over it."""
    workers = small.worker_pids()
    result = small.run(FORKED_TOUCHERS, timeout=20)
    assert result.status == "memory", result
    assert_aftermath(small, workers)


def test_sysv_shared_memory_counts_against_the_memory_limit(small):
    """3 x 128 MB segments, each written and detached again (so never more than one mapped at
    a time): they outlive their mapping, and must still count."""
    workers = small.worker_pids()
    key = ipc_key()
    code = IPC_LIB + (
        f"for n in range(3):\n"
        f"    segment = check(libc.shmget({key} + n, 128 << 20, IPC_CREAT | 0o600), 'shmget')\n"
        "    address = libc.shmat(segment, None, 0)\n"
        "    if address in (None, ctypes.c_void_p(-1).value):\n"
        "        raise OSError(ctypes.get_errno(), 'shmat')\n"
        "    ctypes.memset(address, 1, 128 << 20)\n"
        "    libc.shmdt(address)\n"
        "print('filled')\n"
    )
    keys = [key + n for n in range(3)]
    try:
        result = small.run(code, timeout=20)
        assert result.status == "memory", result
        assert wait_for(lambda: not set(keys) & sysv_keys("shm")), "the segments outlived it"
        assert_aftermath(small, workers)
    finally:
        host_ipc()["remove"](keys)


# ----------------------------------------------------------------------------- 2. IPC


def probe_ipc(key: int, name: str) -> str:
    """A snippet that reports its uid and what it sees of the objects ``key`` and ``name``."""
    return IPC_LIB + f"print(json.dumps({{'uid': os.getuid(), 'seen': probe({key}, {name!r})}}))\n"


def create_ipc(key: int, name: str) -> str:
    """The same, after creating them (and putting a message in each queue)."""
    return probe_ipc(key, name).replace("print(", f"create({key}, {name!r})\nprint(", 1)


GONE = {"shm": "ENOENT", "msg": "ENOENT", "mq": "ENOENT"}
FOUND = {"shm": "found", "msg": "found", "mq": "found"}


def host_ipc_view(key: int, name: str) -> dict:
    return {
        "listed": {kind: key in sysv_keys(kind) for kind in ("shm", "msg")},
        "opened": host_ipc()["probe"](key, name),
    }


def test_ipc_objects_are_private_to_their_snippet():
    """SysV shm, a SysV message queue and a POSIX queue: invisible to the next snippet of the
    same worker, to another worker, and to the host once the sandbox is closed."""
    key, name = ipc_key(), f"/genprm-redteam-{uuid.uuid4().hex}"
    try:
        with Sandbox(workers=2, timeout=TIMEOUT) as fresh:
            made = run_json(fresh, create_ipc(key, name))
            assert made["seen"] == FOUND, made  # the probe sees them where they exist
            probe = probe_ipc(key, name)
            same = run_on(fresh, probe, lambda uid: uid == made["uid"])
            other = run_on(fresh, probe, lambda uid: uid != made["uid"])
            workers, uids = fresh.worker_pids(), snippet_uids(fresh)
        observed = {
            "next snippet, same worker": same["seen"],
            "another worker": other["seen"],
            "host after close": host_ipc_view(key, name),
        }
        assert observed == {
            "next snippet, same worker": GONE,
            "another worker": GONE,
            "host after close": {"listed": {"shm": False, "msg": False}, "opened": GONE},
        }
        assert not any(alive(pid) for pid in workers)
        assert not live_pids_of(uids)
    finally:
        host_ipc()["remove"]([key], name)


@pytest.mark.bwrap
def test_ipc_objects_are_private_to_their_snippet_under_bwrap(boxed):
    key, name = ipc_key(), f"/genprm-redteam-{uuid.uuid4().hex}"
    workers = boxed.worker_pids()
    try:
        made = run_json(boxed, create_ipc(key, name))
        assert made["seen"] == FOUND, made
        after = run_json(boxed, probe_ipc(key, name))
        assert after["uid"] == made["uid"]  # one worker: the same one
        observed = {"next snippet": after["seen"], "host": host_ipc_view(key, name)}
        assert observed == {
            "next snippet": GONE,
            "host": {"listed": {"shm": False, "msg": False}, "opened": GONE},
        }
        assert_aftermath(boxed, workers)
    finally:
        host_ipc()["remove"]([key], name)


# ----------------------------------------------------------------------------- 3. shared folders

WRITE_EVERYWHERE = """
import json, os
NAME, FOLDERS = {name!r}, {folders!r}
report = {{"uid": os.getuid()}}
for folder in FOLDERS:
    path = os.path.join(folder, NAME)
    entry = {{}}
    try:
        with open(path, "w") as handle:
            handle.write("x")
        entry["write"] = "ok"
    except OSError as error:
        entry["write"] = type(error).__name__
    entry["nosuid"] = bool(os.statvfs(folder).f_flag & os.ST_NOSUID)
    try:
        os.chmod(path, 0o4755)
        entry["setuid"] = "allowed"
    except OSError as error:
        entry["setuid"] = type(error).__name__
    report[folder] = entry
# 100 MB into /run/lock, 10 MB a file (RLIMIT_FSIZE would stop a single 100 MB file anyway).
try:
    for n in range(10):
        with open(f"/run/lock/{{NAME}}-big{{n}}", "wb") as handle:
            handle.write(b"\\1" * (10 << 20))
    report["100 MB into /run/lock"] = "written"
except OSError as error:
    report["100 MB into /run/lock"] = type(error).__name__
finally:
    for n in range(10):
        try:
            os.remove(f"/run/lock/{{NAME}}-big{{n}}")
        except OSError:
            pass
print(json.dumps(report))
"""
LOOK_EVERYWHERE = """
import json, os
print(json.dumps({{"uid": os.getuid(), "seen": [f for f in {files!r} if os.path.lexists(f)]}}))
"""


def test_world_writable_folders_are_private_capped_and_nosuid(sandbox):
    folders = world_writable_dirs()
    assert "/run/lock" in folders, folders  # not only the folders the sandbox always covered
    name = f"genprm-redteam-{uuid.uuid4().hex}"
    files = [os.path.join(folder, name) for folder in folders]
    workers = sandbox.worker_pids()
    try:
        report = run_json(sandbox, WRITE_EVERYWHERE.format(name=name, folders=folders), 30)
        other = run_on(
            sandbox, LOOK_EVERYWHERE.format(files=files), lambda uid: uid != report["uid"]
        )
        observed = {
            "in the snippet": {key: value for key, value in report.items() if key != "uid"},
            "the host sees": [path for path in files if os.path.lexists(path)],
            "another worker sees": other["seen"],
        }
        in_each = {"write": "ok", "nosuid": True, "setuid": "PermissionError"}
        assert observed == {
            "in the snippet": {
                **{folder: in_each for folder in folders},
                "100 MB into /run/lock": "OSError",
            },
            "the host sees": [],
            "another worker sees": [],
        }
        assert_aftermath(sandbox, workers)
    finally:
        for folder in folders:
            for entry in os.listdir(folder):
                if entry.startswith(name):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, entry))


# ----------------------------------------------------------------------------- 4, 5. status pipe

HUGE = {
    "status-pipe-flood": 'import os\nos.write(3, b"x" * 50_000_000)\nprint("after")',
    "huge-type-name": 'raise type("T" * 20_000_000, (Exception,), {})()',
    "huge-message": 'raise ValueError("m" * 50_000_000)',
}


@pytest.mark.parametrize("case", list(HUGE))
def test_huge_reports_are_cut_short_promptly(single, case):
    workers = single.worker_pids()
    started = time.monotonic()
    result = single.run(HUGE[case], timeout=20)
    elapsed = time.monotonic() - started
    assert result.status == "error", result.status
    assert len(result.feedback) <= LIMIT, len(result.feedback)
    assert len(result.error_message or "") <= LIMIT, len(result.error_message)
    if case == "status-pipe-flood":
        assert result.error_type == "SandboxError", result.error_type[:100]
    elif case == "huge-type-name":
        assert result.error_type.startswith("TTTT"), result.error_type[:100]
        assert len(result.error_type) <= 1_000, len(result.error_type)
    else:
        assert result.error_type == "ValueError"
    assert elapsed < 15, elapsed  # far from the 20 s timeout
    assert_aftermath(single, workers)


def test_unparsable_status_report_is_a_sandbox_error(single):
    """A nesting bomb on the status pipe must not take the worker down."""
    workers = single.worker_pids()
    result = single.run('import os\nos.write(3, b"[" * 100000)\nos._exit(0)', timeout=10)
    assert (result.status, result.error_type) == ("error", "SandboxError"), result
    assert_aftermath(single, workers)


@pytest.mark.parametrize(
    "report, exit_code, expected",
    [
        (b"[" * 50_000, 0, ("error", "SandboxError")),  # under the cap: the parser's recursion
        (b'"ok"', 0, ("error", "SandboxError")),
        (b'{"type": "T\\ud800", "message": "\\udcff"}', 0, ("error", "T?")),
        (b"", -40, ("killed", "Killed")),  # a real-time signal has no name of its own
    ],
    ids=["nesting", "not-an-object", "forged-surrogates", "real-time-signal"],
)
def test_whatever_reaches_the_status_pipe_is_the_snippets_result(report, exit_code, expected):
    """The worker's reading of a report, for reports a snippet forged (also in the fallback
    without PID namespaces, where a snippet can end itself with any signal)."""
    status, error = worker._status_from(report, exit_code)
    assert (status, error["type"]) == expected
    json.dumps(error, ensure_ascii=False).encode()  # valid UTF-8 throughout


# ----------------------------------------------------------------------------- 6. memory

# The scan looks for a marker split in two halves, FIRST and SECOND: it finds FIRST, then
# compares the bytes after it with SECOND. The snippet's source (and so the request the worker
# read) holds the two halves apart, and the scan never joins them, so the only way to find the
# whole marker is a copy that was already in memory: from the earlier snippets. Chunks read
# from /proc/self/mem land in this very memory, but they can only hold the whole marker if it
# was there to begin with. The control is a second split marker that this snippet joins into
# an object it keeps: the same scan must find it, or it did not look where the heap is.
SCAN_MEMORY = """
import ctypes, json, os
NEEDLES = {{"marker": ({m1!r}, {m2!r}), "control": ({c1!r}, {c2!r})}}
planted = bytearray((NEEDLES["control"][0] + NEEDLES["control"][1]).encode())
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: this uid may open its own mem
needles = {{key: (a.encode(), b.encode()) for key, (a, b) in NEEDLES.items()}}
hits = {{key: 0 for key in needles}}
CHUNK = 1 << 20
with open("/proc/self/maps") as handle:
    regions = handle.read().splitlines()
scanned = 0
with open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in regions:
        fields = line.split()
        if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
            continue
        start, end = (int(value, 16) for value in fields[0].split("-"))
        for position in range(start, end, CHUNK):
            try:
                mem.seek(position)
                chunk = mem.read(min(end, position + CHUNK + 64) - position)
            except OSError:
                break
            scanned += len(chunk)
            for key, (first, second) in needles.items():
                at = chunk.find(first)
                while at != -1:
                    tail = at + len(first)
                    if chunk[tail:tail + len(second)] == second:
                        hits[key] += 1
                    at = chunk.find(first, at + 1)
print(json.dumps({{"hits": hits, "scanned_mb": scanned >> 20, "planted": len(planted)}}))
"""


def test_no_memory_of_earlier_snippets(single):
    marker = f"genprm-mem-{uuid.uuid4().hex}"
    control = f"genprm-ctl-{uuid.uuid4().hex}"
    for n in range(3):
        code = f"secret_{n} = {marker!r}\nprint(secret_{n} * 4)"
        result = single.run(code)
        assert (result.status, result.stdout) == ("ok", marker * 4 + "\n"), result
    halves = {"m1": marker[:20], "m2": marker[20:], "c1": control[:20], "c2": control[20:]}
    code = SCAN_MEMORY.format(**halves)
    assert marker not in code and control not in code
    report = run_json(single, code, timeout=60)
    assert report["hits"]["control"] >= 1, report  # the scan does see the heap
    assert report["hits"]["marker"] == 0, report


# ----------------------------------------------------------------------------- 7. host processes

SCAN_PROCESSES = """
import json, os
MARK = {mark!r}.encode()
pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
found = []
for pid in pids:
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as handle:
            if MARK in handle.read():
                found.append(pid)
    except OSError:
        pass
print(json.dumps({{"getpid": os.getpid(), "proc_self": os.readlink("/proc/self"),
                  "pids": len(pids), "found": found}}))
"""


@pytest.fixture
def marked_host_process():
    mark = f"genprm-marker-{uuid.uuid4().hex}"
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", mark])
    try:
        yield mark, process.pid
    finally:
        process.kill()
        process.wait()


def check_host_processes_invisible(sandbox: Sandbox, mark: str, pid: int) -> None:
    code = SCAN_PROCESSES.format(mark=mark)
    # The control: the same scan, from the host, does find the process.
    host_view = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert str(pid) in json.loads(host_view.stdout)["found"], host_view.stdout
    workers = sandbox.worker_pids()
    report = run_json(sandbox, code)
    expected = {"getpid": 1, "proc_self": "1", "found": []}
    assert {key: report[key] for key in expected} == expected, report
    assert report["pids"] <= 10, report
    assert_aftermath(sandbox, workers)


def test_host_processes_are_invisible(sandbox, marked_host_process):
    check_host_processes_invisible(sandbox, *marked_host_process)


@pytest.mark.bwrap
def test_host_processes_are_invisible_under_bwrap(boxed, marked_host_process):
    check_host_processes_invisible(boxed, *marked_host_process)


# ----------------------------------------------------------------------------- 8. surrogates

SURROGATES = {
    "message": 'raise ValueError("\\ud800 boom")',
    "print": 'print("\\udcff")',
    "type-name": 'raise type("Boom\\ud800", (Exception,), {})("x")',
    "exit-code": 'raise SystemExit("\\udcff")',
}


@pytest.mark.parametrize("case", list(SURROGATES))
def test_lone_surrogates_do_not_reach_the_result(single, case):
    result = single.run(SURROGATES[case])
    fields = {
        name: getattr(result, name)
        for name in ("feedback", "error_message", "error_type", "stdout", "stderr")
    }
    unencodable = {}
    for name, value in fields.items():
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:
            unencodable[name] = value
    assert unencodable == {}, result
    json.dumps(dataclasses.asdict(result), ensure_ascii=False).encode()


# ------------------------------------------------------------------ 9. tmpfs inodes, kernel memory


@pytest.fixture(scope="module")
def tiny():
    with Sandbox(workers=1, memory_mb=48, timeout=5) as shared:
        yield shared


def test_endless_mkdir_in_tmp_is_stopped(tiny):
    workers = tiny.worker_pids()
    code = 'import os\ni = 0\nwhile True:\n    os.mkdir(f"/tmp/d{i}")\n    i += 1'
    started = time.monotonic()
    result = tiny.run(code)
    elapsed = time.monotonic() - started
    assert result.status in ("error", "memory"), result
    if result.status == "error":
        assert result.error_type == "OSError", result
    assert elapsed < 5 + 20, elapsed
    assert_aftermath(tiny, workers)


# Four processes, each filling 28 pipes enlarged to 1 MB: kernel memory (pipe buffers), not the
# processes' own, far over 48 MB together.
PIPE_BUFFERS = """
import fcntl, os, time
F_SETPIPE_SZ = 1031
def fill():
    pipes = []
    for _ in range(28):
        read, write = os.pipe()
        fcntl.fcntl(write, F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(write, False)
        try:
            while True:
                os.write(write, b"x" * 65536)
        except BlockingIOError:
            pass
        pipes.append((read, write))
    return pipes
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        held = fill()
        time.sleep(2)
        os._exit(0)
    children.append(pid)
print([os.waitpid(child, 0)[1] for child in children])
"""


def test_kernel_memory_counts_against_the_memory_limit(tiny):
    workers = tiny.worker_pids()
    result = tiny.run(PIPE_BUFFERS, timeout=20)
    assert result.status == "memory", result
    assert_aftermath(tiny, workers)


# ----------------------------------------------------------------------------- 10. timeouts


def test_tiny_timeout_times_out_promptly(single):
    workers = single.worker_pids()
    started = time.monotonic()
    result = single.run("import time\nwhile True:\n    time.sleep(1)", timeout=0.001)
    elapsed = time.monotonic() - started
    assert (result.status, elapsed < 5) == ("timeout", True), (result, elapsed)
    assert_aftermath(single, workers)


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf], ids=str)
def test_invalid_run_timeout_is_a_value_error(single, timeout):
    workers = single.worker_pids()
    started = time.monotonic()
    with pytest.raises(ValueError):
        single.run("print(1)", timeout=timeout)
    assert time.monotonic() - started < 5  # refused, not tried
    assert_aftermath(single, workers)


@pytest.mark.parametrize("timeout", [1e7, MAX_TIMEOUT_S * 1.01], ids=str)
def test_a_timeout_over_the_maximum_is_a_value_error_and_the_worker_lives(single, timeout):
    workers = single.worker_pids()
    with pytest.raises(ValueError, match="at most 86400"):
        single.run("print(1)", timeout=timeout)
    with single.session() as session, pytest.raises(ValueError, match="at most 86400"):
        session.run("print(1)", timeout=timeout)
    result = single.run("print(2)", timeout=MAX_TIMEOUT_S)  # the maximum itself is a time-out
    assert (result.status, result.stdout) == ("ok", "2\n"), result
    assert_aftermath(single, workers)


def test_invalid_sandbox_timeout_is_a_value_error():
    made = None
    try:
        with pytest.raises(ValueError):
            made = Sandbox(workers=1, timeout=0)
    finally:
        if made is not None:
            made.close()
