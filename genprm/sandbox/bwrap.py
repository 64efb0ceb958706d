"""The command line that starts a sandbox worker inside bubblewrap (``Sandbox(bwrap=True)``).

The worker sees a fresh root holding, read-only, only the system's programs and libraries, the
Python installation, the virtual environment, the genprm package and the other directories on
``sys.path``. The folders bwrap creates to hold those are world-readable (its default is 0700):
that is what lets a snippet under the dropped uid import from a Python installed under /root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
PACKAGE = Path(__file__).resolve().parents[1]


def command(bwrap: str, writable: dict[str, str] | None = None) -> list[str]:
    """``bwrap`` and its arguments, up to and including the ``--`` before the worker's own;
    ``writable`` maps host folders to where the worker sees them, writable (its memory
    cgroups)."""
    if os.geteuid() == 0:
        # No user namespace: it would map uid 0 alone, so the worker could not switch to the
        # snippet uid the host reserved for it. No PID namespace: the worker makes its own, one
        # per snippet.
        namespaces = ["--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try"]
    else:  # user (our uid alone), PID, network, IPC, UTS, cgroup; the worker is bwrap's child
        namespaces = ["--unshare-all", "--as-pid-1"]
    # Neither --die-with-parent (bwrap ties it to the starting thread, and the pool's threads
    # end; the worker dies with bwrap instead) nor --new-session (the pool already starts bwrap
    # in a session of its own, and killing its process group must reach the worker).
    arguments = [bwrap, *namespaces, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    binds = python_paths()
    for parent in sorted({str(p) for path in [*binds, *SYSTEM_FILES] for p in Path(path).parents}):
        if parent != "/":
            arguments += ["--perms", "0755", "--dir", parent]
    for path in binds:
        arguments += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        arguments += ["--ro-bind-try", path, path]
    for source, target in (writable or {}).items():
        arguments += ["--bind", source, target]
    return [*arguments, "--chdir", "/", "--"]


def python_paths() -> list[str]:
    """The outermost folders the worker imports from: the Python installation, the virtual
    environment, genprm and the other entries of sys.path, except incidental ones (the working
    directory, the script's folder, genprm's parent such as the repository root) whose other
    files snippets have no business reading."""
    script = os.path.dirname(os.path.abspath(sys.argv[0]))
    incidental = {"/", os.getcwd(), script, str(PACKAGE.parent)}
    entries = {os.path.abspath(path) for path in sys.path if os.path.exists(path)} - incidental
    wanted = {os.path.abspath(path) for path in (sys.base_prefix, sys.prefix, PACKAGE)} | entries
    binds: list[str] = []
    for path in sorted(wanted):  # a folder sorts before its contents
        if not any(path == f or path.startswith(f + "/") for f in [*SYSTEM_DIRS, *binds]):
            binds.append(path)
    return binds
