"""Where genprm keeps what it generates (``$GENPRM_CACHE_DIR``, else ``~/.cache/genprm``) and
where it reads the benchmark data by default (``$GENPRM_DATA_DIR``, else ``../shared/data``)."""

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


def data_dir() -> Path:
    """The folder of the datasets the commands default to (``processbench/``, ``math500/``,
    ``gsm8k/``): ``$GENPRM_DATA_DIR``, else ``../shared/data`` from the current directory (a
    clone beside ``shared/``), made absolute. Never relative to the installed package, which in
    a non-editable install lies in site-packages."""
    return Path(os.environ.get("GENPRM_DATA_DIR") or "../shared/data").expanduser().resolve()


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


class OutputBusy(RuntimeError):
    """Another live process is writing the same output."""


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold ``OUTPUT.lock`` (beside ``output``) for the block: one writer per output. A second
    process is refused with :class:`OutputBusy` naming the holder's pid and command; the lock
    goes with its holder (a ``kill -9`` too), so a crashed run never blocks the rerun."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.with_name(output.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise OutputBusy(
                f"{output} is being written by {holder} (lock: {path}); wait for it to finish "
                "or stop it, or write to another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({_command_line()[:300]})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def write_all(fd: int, data: bytes, path: Path | str) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer: a full disk, a
    signal), or raise ``OSError`` naming ``path``. Appends of whole lines stay whole lines for a
    reader unless the disk fills midway, which leaves a torn last line for the next run to cut."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as error:
            raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from None
        view = view[written:]


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
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from None
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


class OutputError(ValueError):
    """An output this process cannot write: a file where a folder belongs (or the other way
    round), the input itself, a read-only or full file system."""


def check_output_dir(path: Path) -> None:
    """OutputError unless ``path`` is a folder this process can write (made, with its parents,
    when missing). Commands check their output before they start an engine, so that a bad one
    fails at once, not after the model has loaded."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is not a folder (the output is a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the output folder {path}: {error.strerror}") from None
    _probe(path, path)


def check_output_file(path: Path, inputs=()) -> None:
    """OutputError unless this process can write the file ``path``: not a folder, none of the
    ``inputs`` (None among them is skipped), in a writable folder (made when missing)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder, not a file")
    if any(_same_file(path, source) for source in inputs if source is not None):
        raise OutputError(f"{path} is the input file: write the output to another file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the folder of {path}: {error.strerror}") from None
    _probe(path.parent, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write to {path}: permission denied")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist
        return False


def _probe(folder: Path, path: Path) -> None:
    """Write a byte to a new file in ``folder``, then delete it: a read-only or full file
    system shows up now (OutputError naming ``path``)."""
    probe = folder / f".genprm-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to {path}: {error.strerror}") from None


def claim_output(path: Path, *, folder: bool, inputs=()) -> contextlib.ExitStack:
    """Check the output ``path`` (:func:`check_output_dir`, or :func:`check_output_file` with
    ``inputs``) and take its :func:`output_lock`, held until the returned stack is closed
    (``with claim:``). OutputError, OutputBusy or (the lock file) OSError when it cannot be had."""
    if folder:
        check_output_dir(path)
    else:
        check_output_file(path, inputs)
    claim = contextlib.ExitStack()
    claim.enter_context(output_lock(Path(path).resolve()))
    return claim
