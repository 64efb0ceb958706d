"""What runs, seen from /proc: the checks sandbox tests make after hostile snippets, and the
process trees of commands that the lifetime tests kill."""

from __future__ import annotations

import os
import threading
import time

from genprm import lifetime
from genprm.sandbox.isolation import descendants, proc_stat
from genprm.sandbox.snippet import SESSION_NAME, WAITING_NAME
from genprm.sandbox.zygote import NAME as ZYGOTE_NAME


def alive(pid: int) -> bool:
    """Running or sleeping: a zombie (dead, not yet reaped) does not count."""
    return (proc_stat(pid) or ("X",))[0] not in ("Z", "X")


def process_name(pid: int) -> str | None:
    """The name ``ps`` shows for ``pid``, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.index(b"(") + 1 : text.rindex(b")")].decode(errors="replace")


def live_pids_of(uids: set[int]) -> list[int]:
    """Live processes whose owner is one of ``uids`` (a ps -u scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                owner = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if owner in uids and alive(int(entry)):
                found.append(int(entry))
    return found


def serving_worker(launcher: int) -> set[int]:
    """The worker process a launcher pid (``Sandbox.worker_pids()``) stands for: its only
    child, the init of the PID namespace in which the worker serves."""
    return {pid for pid in descendants(launcher) if (proc_stat(pid) or (None, None))[1] == launcher}


def worker_processes(launcher: int) -> set[int]:
    """The worker's own processes below a launcher pid: the serving worker, its zygote and the
    snippet process prepared for the next request, waiting for it."""
    named = {
        pid for pid in descendants(launcher) if process_name(pid) in (ZYGOTE_NAME, WAITING_NAME)
    }
    return serving_worker(launcher) | named


def snippet_processes(launchers) -> list[int]:
    """Live processes below these workers that are not the workers' own: what snippets left."""
    return sorted(
        pid
        for launcher in launchers
        for pid in descendants(launcher)
        if alive(pid) and pid not in worker_processes(launcher)
    )


def snippet_uids(sandbox) -> set[int]:
    """The uids a sandbox's workers run snippets under (one reserved per worker, as root)."""
    return {worker.facts["uid"] for worker in sandbox._workers}


def session_processes(sandbox) -> list[int]:
    """The sandbox's live session processes (each a namespace waiting for its next block)."""
    return [pid for pid in live_pids_of(snippet_uids(sandbox)) if process_name(pid) == SESSION_NAME]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class ProcessTree:
    """Follows everything below a running process (pid and start time), while it runs: what it
    started, renamed (vLLM sets process titles) or not, and what its death orphans."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.seen: dict[int, int] = {}
        self.commands: dict[int, str] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(interval,), daemon=True)
        self._thread.start()

    def _follow(self, interval: float) -> None:
        while not self._stopped.is_set():
            found = lifetime.below({self.pid}, lifetime.processes())
            for pid in found.keys() - self.seen.keys():
                self.commands[pid] = command_line(pid) or "?"
            self.seen.update(found)
            self._stopped.wait(interval)

    def stop(self) -> None:
        """Stop following (call it once the process is dead: what it left is still known)."""
        self._stopped.set()
        self._thread.join()

    def alive(self, prefix: str = "") -> list[str]:
        """The command lines (as they are now) of the live processes seen whose command line
        starts with ``prefix``."""
        table = lifetime.processes()
        found = []
        for pid, start in list(self.seen.items()):
            if table.get(pid, ("", 0, None))[2] == start:
                command = command_line(pid) or self.commands[pid]
                if command.startswith(prefix):
                    found.append(command)
        return found


def command_line(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
