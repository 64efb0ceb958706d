"""The cache folder helpers: a published folder replaces the old one in one step; a torn
last line is cut off an appended file."""

import fcntl
import logging
import multiprocessing
import threading

import pytest

from genprm.paths import cut_torn_line, locked, publish_dir, staging_dir, write_atomically


def test_publish_into_a_new_place(tmp_path):
    target = tmp_path / "cache" / "thing"
    staging = staging_dir(target)
    (staging / "file").write_text("new")
    publish_dir(staging, target)
    assert (target / "file").read_text() == "new"
    assert not staging.exists()


def test_publish_replaces_without_a_moment_of_absence(tmp_path):
    """A reader polling the folder while it is replaced 200 times never finds it missing
    (delete-then-rename leaves a gap; the exchange does not)."""
    target = tmp_path / "thing"
    target.mkdir()
    (target / "file").write_text("0")
    missing, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                (target / "file").read_text()
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for round_ in range(1, 201):
            staging = staging_dir(target)
            (staging / "file").write_text(str(round_))
            (staging / "extra").mkdir()
            publish_dir(staging, target)
    finally:
        stop.set()
        reader.join()
    assert not missing
    assert (target / "file").read_text() == "200"
    assert not list(tmp_path.glob(".thing.tmp-*"))


def test_staging_starts_empty(tmp_path):
    target = tmp_path / "thing"
    first = staging_dir(target)
    (first / "stale").write_text("left by a killed run")
    assert not any(staging_dir(target).iterdir())


def test_lock_is_exclusive_between_processes(tmp_path):
    target = tmp_path / "thing"
    context = multiprocessing.get_context("fork")
    entered, release = context.Event(), context.Event()

    def hold():
        with locked(target):
            entered.set()
            release.wait(60)

    holder = context.Process(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        with open(tmp_path / "thing.lock", "w") as handle:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        release.set()
        holder.join(30)
    with open(tmp_path / "thing.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once the holder is done


def test_write_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "sub" / "out.jsonl"
    write_atomically(target, b"old\n")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # fails inside the write, after the open
    assert target.read_bytes() == b"old\n"
    assert not list(target.parent.glob(".out.jsonl.tmp-*"))
    write_atomically(target, b"new\n")
    assert target.read_bytes() == b"new\n"


def test_cut_torn_line_keeps_the_whole_lines_and_says_what_it_cut(tmp_path, caplog):
    path = tmp_path / "lines.jsonl"
    assert cut_torn_line(path) == b"" and not path.exists()
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id"')
    with caplog.at_level(logging.WARNING, logger="genprm.paths"):
        assert cut_torn_line(path) == b'{"id": 1}\n{"id": 2}\n'
    assert path.read_bytes() == b'{"id": 1}\n{"id": 2}\n'
    assert f"{path}: cutting off a torn last line (5 bytes)" in caplog.text
    caplog.clear()
    assert cut_torn_line(path) == b'{"id": 1}\n{"id": 2}\n'  # whole lines: unchanged
    assert path.read_bytes() == b'{"id": 1}\n{"id": 2}\n' and not caplog.text
    path.write_bytes(b"torn")
    assert cut_torn_line(path) == b"" and path.read_bytes() == b""
