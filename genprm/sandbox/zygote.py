"""The zygote: a copy of the warm worker taken before the worker read any request. Every snippet
process is forked from it, so no snippet can find an earlier snippet's code, output or report in
its memory (the worker, which handles all of those, is never forked again).

It prepares snippet processes on the worker's request and reaps them (it is their subreaper).
Protocol, one JSON message per SOCK_SEQPACKET datagram:

- worker -> zygote ``{"prepare": slot}``: fork a snippet process into memory cgroup ``slot``;
- zygote -> worker ``{"ready": pid, "workdir": path}`` with descriptors (stdout, stderr and
  status read ends, request write end, pidfd);
- zygote -> worker ``{"exited": pid, "status": wait_status}`` once it is reaped;
- zygote -> worker ``{"stopped": pid}`` once every thread of it has stopped (the worker pauses a
  session between its blocks with SIGSTOP).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import tempfile

from . import isolation
from .snippet import SnippetSettings, run_snippet

MAX_DATAGRAM = 4096
NAME = "genprm-zygote"  # the process names ps shows
DESCRIPTORS = 5


class Zygote:
    def __init__(
        self, settings: SnippetSettings, channel: socket.socket, pid_namespace: int | None
    ):
        self.settings = settings
        self.channel = channel
        self.pid_namespace = pid_namespace  # our own, to fork each snippet into a fresh one
        self.children: set[int] = set()

    def serve(self) -> None:
        """Until the worker goes away; never returns."""
        isolation.set_name(NAME)
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_write)
        poller = select.poll()
        poller.register(self.channel, select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == wake_read:
                    os.read(wake_read, MAX_DATAGRAM)
                    self._reap()
                    continue
                message = self.channel.recv(MAX_DATAGRAM)
                if not message:
                    os._exit(0)
                self._prepare(json.loads(message)["prepare"])

    def _prepare(self, slot: int) -> None:
        settings = self.settings
        if settings.private_scratch:
            workdir = "/tmp"
        else:
            workdir = tempfile.mkdtemp(prefix="genprm-snippet-")
            os.chown(workdir, settings.owner, settings.owner)
        pipes = [os.pipe() for _ in range(4)]  # stdout, stderr, status: to us; request: from us
        theirs = [pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][0]]
        ours = [pipes[0][0], pipes[1][0], pipes[2][0], pipes[3][1]]
        if self.pid_namespace is not None:
            isolation.setns(self.pid_namespace, isolation.CLONE_NEWPID)
            isolation.unshare(isolation.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            try:
                run_snippet(settings, slot, workdir, theirs)
            finally:
                os._exit(127)
        self.children.add(pid)
        pidfd = os.pidfd_open(pid)
        message = json.dumps({"ready": pid, "workdir": workdir}).encode()
        socket.send_fds(self.channel, [message], [*ours, pidfd])
        for fd in [*theirs, *ours, pidfd]:
            os.close(fd)

    def _reap(self) -> None:
        """Reap every child that ended: snippet processes are reported, orphans the snippets
        left (in the fallback without PID namespaces) are only reaped. A snippet process that
        stopped is reported too."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            if os.WIFSTOPPED(status):
                self.channel.send(json.dumps({"stopped": pid}).encode())
            else:
                self.children.discard(pid)
                self.channel.send(json.dumps({"exited": pid, "status": status}).encode())
