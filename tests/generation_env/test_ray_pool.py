"""``genprm.cluster.RayPool`` on a local Ray cluster, with small jobs instead of engines: shards,
tools built once per actor, results and their order, errors, and a SIGKILLed actor whose
shard is redone. Runs in .venv-vllm (where Ray is installed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from genprm.backends import EngineError
from genprm.cluster import ClusterError, RayOptions, RayPool, on_actors

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.vllm


class Tools:
    """What an actor builds: the process it lives in, and a folder for marker files."""

    def __init__(self, marker_dir: str | None = None):
        self.pid = os.getpid()
        self.marker_dir = marker_dir


async def square(tools: Tools, shard: list[int]) -> list[tuple[int, int, int]]:
    return [(item, item * item, tools.pid) for item in shard]


async def echo(tools: Tools, shard: list) -> list:
    return shard


async def fail_on_three(tools: Tools, shard: list[int]) -> list[int]:
    if 3 in shard:
        raise EngineError("the engine refused item 3")
    return shard


async def die_once_on_two(tools: Tools, shard: list[int]) -> list[tuple[int, int]]:
    """SIGKILL this actor the first time it sees item 2 (a marker file remembers it)."""
    marker = Path(tools.marker_dir) / "died"
    if 2 in shard and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return [(item, tools.pid) for item in shard]


async def always_die(tools: Tools, shard: list[int]) -> list[int]:
    os.kill(os.getpid(), signal.SIGKILL)
    return shard


async def write_each(tools: Tools, shard: list[str], write, progress) -> None:
    for item in shard:
        write(f"{item}\n".encode())
        progress(len(item))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="gray-test-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, logging_level="WARNING")
    # the actors import this test module by value: it is not importable there
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_every_shard_is_mapped_once_on_tools_built_once_per_actor():
    pool = RayPool(RayOptions(actors=2, shard_size=3), Tools)
    results = []
    shards = pool.map(square, list(range(10)), results.append)
    assert shards == 4
    items = [item for result in results for item, _, _ in result]
    assert sorted(items) == list(range(10))
    assert all(square == item * item for result in results for item, square, _ in result)
    pids = {pid for result in results for _, _, pid in result}
    assert pids <= set(pool.ready()) and len(pool.ready()) == 2
    assert os.getpid() not in pids
    assert len(pool.busy_s) == 2 and sum(pool.busy_s) > 0
    pool.close()


def test_items_with_one_key_share_a_shard():
    results = []
    with RayPool(RayOptions(actors=2, shard_size=2), Tools) as pool:
        items = ["a1", "a2", "a3", "b1", "c1", "c2"]
        pool.map(echo, items, results.append, key=lambda item: item[0])
    groups = sorted(sorted(shard) for shard in results)
    assert groups == [["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]


def test_on_actors_replays_writes_and_progress_in_order_here():
    written, counted = [], []
    with RayPool(RayOptions(actors=2, shard_size=2), Tools) as pool:
        run = on_actors(pool, write_each)
        asyncio.run(run(["x", "yy", "zzz", "w"], written.append, counted.append))
    lines = b"".join(written).decode().split()
    assert sorted(lines) == ["w", "x", "yy", "zzz"]
    # each write is followed by its own progress call, shard by shard
    assert counted == [len(line) for line in lines]


def test_on_actors_starts_the_pool_on_the_calling_thread_and_only_with_work(monkeypatch):
    started_on = []
    start = RayPool.start

    def recording_start(self):
        started_on.append(threading.current_thread())
        start(self)

    monkeypatch.setattr(RayPool, "start", recording_start)
    with RayPool(RayOptions(actors=1, shard_size=2), Tools) as pool:
        run = on_actors(pool, write_each)
        asyncio.run(run([], lambda _: None))
        assert started_on == [] and pool.actors == []
        asyncio.run(run(["x"], lambda _: None))
        assert started_on[0] is threading.main_thread()
        assert len(pool.actors) == 1


def test_an_engine_error_in_a_job_is_raised_here_as_an_engine_error():
    with RayPool(RayOptions(actors=1, shard_size=2), Tools) as pool:
        with pytest.raises(EngineError, match="refused item 3"):
            pool.map(fail_on_three, [1, 2, 3, 4], lambda _: None)


def test_a_sigkilled_actor_is_restarted_and_its_shard_redone_once(tmp_path):
    results = []
    make = lambda: Tools(str(tmp_path))  # noqa: E731
    with RayPool(RayOptions(actors=2, shard_size=1, max_restarts=1), make) as pool:
        pool.map(die_once_on_two, [0, 1, 2, 3, 4, 5], results.append)
    assert (tmp_path / "died").exists()
    items = [item for result in results for item, _ in result]
    assert sorted(items) == [0, 1, 2, 3, 4, 5]  # nothing lost, nothing twice
    (pid,) = [pid for result in results for item, pid in result if item == 2]
    assert pid != int((tmp_path / "died").read_text())  # redone by the restarted actor


def test_an_actor_dying_more_often_than_it_may_restart_stops_the_job():
    with RayPool(RayOptions(actors=1, shard_size=1, max_restarts=0), Tools) as pool:
        with pytest.raises(ClusterError, match="--ray-max-restarts=0"):
            pool.map(always_die, [1], lambda _: None)
