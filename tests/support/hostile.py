"""Hostile snippets, by name, that several sandbox tests run (plainly, inside a session, in
bubblewrap, as an ordinary user), and a host listener that snippets must not reach."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

INFINITE_LOOP = "while True:\n    pass"
LONG_SLEEP = "import time\ntime.sleep(600)"
SIGTERM_IGNORED = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(100)"
)
MEMORY_BOMBS = {
    "4GB-string": "s = 'a' * (4 << 30)",
    "growing-list": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))",
}
FORK_BOMB = "import os\nwhile True:\n    os.fork()"
STUBBORN_FORK_BOMB = (
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
)
SETSID_ESCAPE = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    time.sleep(100)\n"
    "    os._exit(0)\n"
    "print('parent done')\n"
)
KILL_PARENT = "import os\nos.kill(os.getppid(), 9)\nprint('still here')"
HUGE_OUTPUTS = {
    "one-100MB-write": "import sys\nsys.stdout.write('x' * (100 << 20))",
    "endless-prints": "while True:\n    print('x' * 1000)",
}


@contextlib.contextmanager
def host_listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP listener on the host's 127.0.0.1 and its port, closed on leaving."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener, listener.getsockname()[1]
    finally:
        listener.close()
