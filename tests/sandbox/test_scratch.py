"""genprm.sandbox.scratch: which folders a snippet gets a private tmpfs over, found by searching
the file systems (what the snippets then see is in test_redteam.py)."""

from __future__ import annotations

import os

from genprm.sandbox import scratch


def folder(path, mode: int):
    path.mkdir()
    path.chmod(mode)
    return path


def test_world_writable_folders_reachable_by_anyone_are_found(tmp_path):
    tmp_path.chmod(0o755)
    open_ = folder(tmp_path / "open", 0o755)
    shared = folder(open_ / "shared", 0o1777)
    folder(shared / "inside", 0o777)  # below a found folder: hidden with it
    closed = folder(tmp_path / "closed", 0o700)
    folder(closed / "unreachable", 0o777)  # an owner-less user cannot get there
    traversable = folder(tmp_path / "traversable", 0o711)
    deep = folder(traversable / "deep", 0o777)
    (tmp_path / "link").symlink_to(shared)  # not followed: its target is found once
    found, unsearched = scratch.world_writable(str(tmp_path))
    assert found == sorted([str(shared), str(deep)])
    assert unsearched == []


def test_the_host_search_finds_the_shared_temporary_folders():
    found, _ = scratch.world_writable()
    assert "/tmp" in found
    assert all(os.stat(path).st_mode & 0o002 for path in found)


def test_mount_points_with_escaped_characters(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:40 / /mnt/my\\040data rw shared:3 - nfs4 server:/x rw\n"
        "41 22 0:41 / /mnt/dev rw - fuse.sshfs host: rw\n"
    )
    types = scratch.mount_types(str(info))
    assert types == {"/": "ext4", "/mnt/my data": "nfs4", "/mnt/dev": "fuse.sshfs"}


def test_the_working_folder_is_always_private_and_nested_folders_collapse():
    assert scratch.scratch_folders([]) == ["/tmp"]
    assert scratch.scratch_folders(["/var/tmp", "/tmp/x", "/run/lock"]) == [
        "/run/lock",
        "/tmp",
        "/var/tmp",
    ]


def test_folders_a_scratch_mount_would_hide_stay_listed_once(tmp_path):
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    paths = [str(tmp_path / "venv"), str(tmp_path / "venv" / "lib"), "/usr/lib", "/missing"]
    assert scratch.shadowed(paths, [str(tmp_path)]) == [str(tmp_path / "venv")]
    assert scratch.shadowed(paths, ["/var/tmp"]) == []


def test_network_and_kernel_file_systems_are_not_searched(tmp_path, monkeypatch):
    tmp_path.chmod(0o755)
    remote = folder(tmp_path / "remote", 0o755)
    folder(remote / "shared", 0o777)
    kernel = folder(tmp_path / "kernel", 0o755)
    folder(kernel / "shared", 0o777)
    local = folder(tmp_path / "local", 0o777)
    kinds = {str(remote): "fuse.sshfs", str(kernel): "proc"}
    monkeypatch.setattr(scratch, "mount_types", lambda: kinds)
    assert scratch.world_writable(str(tmp_path)) == ([str(local)], [str(remote)])
