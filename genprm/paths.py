"""Where genprm keeps what it generates: ``$GENPRM_CACHE_DIR``, else ``~/.cache/genprm``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
LOG = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The cache root (converted models, tokenizers, data, logs, vLLM's compile cache)."""
    root = os.environ.get("GENPRM_CACHE_DIR") or Path.home() / ".cache" / "genprm"
    return Path(root).expanduser().resolve()


def default_model_path() -> Path:
    """Where ``genprm-model prepare`` puts the embedded default model."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path.lock`` (created beside ``path``) for the block: two
    processes preparing the same cache entry take turns instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader (or a run killed midway) sees the old file or the whole
    new one, never part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with staging.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def cut_torn_line(path: Path) -> bytes:
    """Cut a torn last line (no newline: a kill in the middle of an append) off ``path``; the
    whole lines that remain (``b""`` when ``path`` does not exist)."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete != len(data):
        LOG.warning("%s: cutting off a torn last line (%d bytes)", path, len(data) - complete)
        os.truncate(path, complete)
    return data[:complete]


def staging_dir(target: Path) -> Path:
    """A fresh, empty folder beside ``target`` to build it in before :func:`publish_dir`."""
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: Path, target: Path) -> None:
    """Move the finished folder ``staging`` to ``target`` so that a reader sees the old folder
    or the new one, never neither and never half of one: where ``target`` exists the two are
    swapped in one step (``renameat2(RENAME_EXCHANGE)``) and the old one is then deleted."""
    try:
        staging.rename(target)
        return
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    _exchange(staging, target)
    shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot swap {first} and {second}: {os.strerror(code)}")
