"""What runs, seen from /proc: the checks sandbox tests make after hostile snippets."""

from __future__ import annotations

import os
import time

from genprm.sandbox.isolation import descendants, proc_stat
from genprm.sandbox.snippet import WAITING_NAME
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


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
