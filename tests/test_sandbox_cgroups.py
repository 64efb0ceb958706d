"""genprm.sandbox.cgroups: finding our memory cgroup (also inside a container, where the
hierarchy is mounted from the container's own cgroup), and a worker's cgroups made, limited,
joined, counted and removed, also when a killed host left them behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from genprm.sandbox import cgroups
from genprm.sandbox.cgroups import CgroupError, WorkerCgroups

MOUNTINFO = (
    "25 1 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n"
    "30 25 0:27 {root} /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    "31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
)
CGROUP = "5:cpu,cpuacct:/elsewhere\n4:memory:{path}\n0::/\n"


def own(tmp_path, path: str, root: str = "/") -> str:
    (tmp_path / "cgroup").write_text(CGROUP.format(path=path))
    (tmp_path / "mountinfo").write_text(MOUNTINFO.format(root=root))
    return cgroups.own_memory_cgroup(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo"))


def test_own_memory_cgroup_on_a_host(tmp_path):
    assert own(tmp_path, "/user.slice/job-7") == "/sys/fs/cgroup/memory/user.slice/job-7"
    assert own(tmp_path, "/") == "/sys/fs/cgroup/memory"


def test_own_memory_cgroup_in_a_container_mounted_from_its_own_cgroup(tmp_path):
    found = own(tmp_path, "/docker/abc/worker", root="/docker/abc")
    assert found == "/sys/fs/cgroup/memory/worker"


def test_no_memory_controller_is_a_cgroup_error(tmp_path):
    (tmp_path / "cgroup").write_text("0::/user.slice\n")
    (tmp_path / "mountinfo").write_text(MOUNTINFO.format(root="/"))
    with pytest.raises(CgroupError, match="no cgroup v1 memory controller"):
        cgroups.own_memory_cgroup(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo"))


def test_a_cgroup_outside_the_mounted_part_is_a_cgroup_error(tmp_path):
    with pytest.raises(CgroupError, match="not mounted"):
        own(tmp_path, "/other/container", root="/docker/abc")


# A uid far from the range the sandbox reserves from: these tests make cgroups by hand.
UID = 1_899_999_000


@pytest.fixture
def made():
    made = WorkerCgroups(UID, 64 << 20)
    yield made
    made.remove()


def read(path: str, name: str) -> str:
    with open(os.path.join(path, name)) as handle:
        return handle.read().strip()


@pytest.mark.root
def test_two_limited_cgroups_below_our_own(made):
    assert os.path.dirname(made.folder) == cgroups.own_memory_cgroup()
    assert [os.path.basename(path) for path in made.paths] == ["0", "1"]
    for path in made.paths:
        assert int(read(path, "memory.limit_in_bytes")) == 64 << 20
        assert cgroups.members(path) == [] and cgroups.oom_kills(path) == 0


@pytest.mark.root
def test_a_process_that_joins_is_counted_and_killed_over_the_limit(made):
    code = (
        "import sys; from genprm.sandbox import cgroups\n"
        "cgroups.join(sys.argv[1])\n"
        "block = b'1' * (200 << 20)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, made.paths[1]], check=False)
    assert done.returncode == -signal.SIGKILL
    assert cgroups.oom_kills(made.paths[1]) == 1 and cgroups.oom_kills(made.paths[0]) == 0


@pytest.mark.root
def test_cgroups_a_killed_host_left_are_removed_with_what_runs_in_them(made):
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from genprm.sandbox import cgroups\n"
         "cgroups.join(sys.argv[1]); print(flush=True); time.sleep(300)", made.paths[0]],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        sleeper.stdout.readline()  # it joined
        assert cgroups.members(made.paths[0]) == [sleeper.pid]
        again = WorkerCgroups(UID, 32 << 20)  # the uid reserved again, by a new host
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert int(read(again.paths[0], "memory.limit_in_bytes")) == 32 << 20
        assert cgroups.members(again.paths[0]) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    made.remove()
    assert not os.path.exists(made.folder)
