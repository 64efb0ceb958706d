"""genprm.sandbox.cgroups: finding our memory cgroup (also inside a container, where the
hierarchy is mounted from the container's own cgroup), and a worker's cgroups made, limited,
joined, counted and removed, also when a killed host left them behind: by the uid's next
holder, or by any sandbox that starts while the uid is not leased."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from genprm.sandbox import Sandbox, cgroups
from genprm.sandbox.cgroups import CgroupError, WorkerCgroups
from genprm.sandbox.pool import SNIPPET_UIDS

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
    # Leased, as a sandbox's are: a sandbox starting meanwhile leaves it alone.
    lease = SNIPPET_UIDS.lease(UID)
    made = WorkerCgroups(UID, 64 << 20)
    yield made
    made.remove()
    lease.release()


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


# A uid no sandbox reserves (below the range), left behind by a "killed host".
STALE_UID = 1_899_998_000


@pytest.fixture
def stale():
    """``genprm-sandbox-<STALE_UID>/{0,1}`` made by hand, as a killed host leaves them."""
    folder = os.path.join(cgroups.own_memory_cgroup(), f"{cgroups.PREFIX}{STALE_UID}")
    os.mkdir(folder)
    for slot in cgroups.SLOTS:
        os.mkdir(os.path.join(folder, slot))
    yield folder
    cgroups.remove_cgroups(folder)


@pytest.mark.root
def test_a_sandbox_removes_cgroups_of_killed_hosts_and_keeps_those_of_live_ones(stale):
    with Sandbox(workers=1) as live:
        mine = os.path.join(cgroups.own_memory_cgroup(), f"{cgroups.PREFIX}{live.isolation['uid']}")
        assert os.path.isdir(mine)
        with Sandbox(workers=1) as other:
            assert not os.path.exists(stale)
            assert os.path.isdir(mine)  # its uid is leased by a live sandbox
            assert other.run("print(1)").stdout == "1\n"
        assert live.run("print(2)").stdout == "2\n"


@pytest.mark.root
def test_a_cgroup_whose_uid_is_leased_is_kept(stale):
    lease = SNIPPET_UIDS.lease(STALE_UID)  # as a host on another uid range holds it
    try:
        cgroups.remove_stale(SNIPPET_UIDS.lease)
        assert os.path.isdir(stale)
    finally:
        lease.release()
    cgroups.remove_stale(SNIPPET_UIDS.lease)
    assert not os.path.exists(stale)
