"""Build the stages from a config and run them: one stage (``genprm-synth <stage>``) or the
whole chain (``genprm-synth run``), each reading the previous stage's file.

Engines are made when a stage first needs its role's, shared by roles with equal options (on one
CPU every role is the embedded model: one engine), and closed at the end. With
``--executor ray`` every Ray actor makes its own (:class:`SynthTools`) and the records are
written here, exactly as in a local run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from genprm.backends import Engine, make_engine
from genprm.cluster import RayOptions, RayPool
from genprm.jsonl import InputError
from genprm.paths import output_lock
from genprm.problems import load_problems
from genprm.sandbox import Sandbox
from genprm.shards import in_shard

from .config import ROLES, STAGES, SynthConfig
from .runner import StageSummary, run_stage
from .stage import Stage
from .store import read_records

EXPORT_DIR = "export"
RECORD_STAGES = STAGES[:-1]  # export writes a folder, not records
SANDBOX_STAGES = ("solve", "rollout", "rationale")


class Engines:
    """The engines of a run, one per distinct options (roles with equal options share it),
    each started on first use: a rerun whose stages are all finished starts none. ``make``
    replaces the config's engines with one for every role (a command's engine flags)."""

    def __init__(self, config: SynthConfig, make: Callable[[], Engine] | None = None):
        self.config = config
        self._shared = None if make is None else _LazyEngine(make)
        self._made: list[tuple[dict[str, Any], _LazyEngine]] = []

    def get(self, role: str) -> Engine:
        if self._shared is not None:
            return self._shared  # type: ignore[return-value]
        options = self.config.engine_options(role)
        for made_options, engine in self._made:
            if made_options == options:
                return engine  # type: ignore[return-value]
        engine = _LazyEngine(lambda: make_engine(**options))
        self._made.append((options, engine))
        return engine  # type: ignore[return-value]

    def close(self) -> None:
        for engine in [self._shared, *(engine for _, engine in self._made)]:
            if engine is not None:
                engine.close_if_started()


class _LazyEngine:
    """Stands for the engine ``make()`` returns until an attribute is first asked for."""

    def __init__(self, make: Callable[[], Engine]):
        self._make = make
        self._engine: Engine | None = None

    def __getattr__(self, name: str):
        if self._engine is None:
            self._engine = self._make()
        return getattr(self._engine, name)

    def close_if_started(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def make_sandbox(config: SynthConfig) -> Sandbox:
    options = dict(config.sandbox)
    options.setdefault("workers", os.cpu_count() or 2)
    return Sandbox(**options)


class SynthTools:
    """What a run's stages work with, in this process or in each Ray actor: the engines
    (:class:`Engines`), one sandbox started when a stage first needs it, and each stage, built
    once per output (the rollout stage keeps MC(s_0) of the problems it has seen)."""

    def __init__(self, config: SynthConfig, make: Callable[[], Engine] | None = None):
        self.config = config
        self.engines = Engines(config, make)
        self._sandbox: Sandbox | None = None
        self._stages: dict[tuple[str, Path], Stage] = {}

    def stage(self, name: str, output: Path) -> Stage:
        if (name, output) not in self._stages:
            if name in SANDBOX_STAGES and self._sandbox is None:
                self._sandbox = make_sandbox(self.config)
            sandbox = self._sandbox if name in SANDBOX_STAGES else None
            self._stages[name, output] = build_stage(
                name, self.config, self.engines, sandbox, output
            )
        return self._stages[name, output]

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        self.engines.close()


def open_pool(
    ray: RayOptions | None, config: SynthConfig, make: Callable[[], Engine] | None = None
) -> RayPool | None:
    """The Ray actors of ``--executor ray`` (started on first use), each with its own
    :class:`SynthTools`; None for a local run. ``make`` must pickle (a ``functools.partial``
    of :func:`~genprm.backends.make_engine`)."""
    if ray is None:
        return None
    if isinstance(make, partial):
        options = [make.keywords]
    else:
        options = [config.engine_options(role) for role in ROLES]
    tp = max(int(option.get("tensor_parallel_size") or 1) for option in options)
    return RayPool(ray, partial(SynthTools, config, make), tp=tp)


def build_stage(
    name: str, config: SynthConfig, engines: Engines, sandbox: Sandbox | None, output: Path
) -> Stage:
    """The stage ``name`` with its settings from ``config``."""
    if name == "solve":
        from .solve import SolveSettings, SolveStage

        return SolveStage(engines.get("policy"), sandbox, config.settings(name, SolveSettings))
    if name == "rollout":
        from .rollout import RolloutSettings, RolloutStage

        settings = config.settings(name, RolloutSettings)
        cache = output.with_name(f"{output.name}.initial.jsonl")
        return RolloutStage(engines.get("rollout"), sandbox, settings, cache_path=cache)
    if name == "label":
        from .label import LabelSettings, LabelStage

        return LabelStage(config.settings(name, LabelSettings))
    if name == "rationale":
        from .rationale import RationaleSettings, RationaleStage

        settings = config.settings(name, RationaleSettings)
        return RationaleStage(engines.get("rationale"), sandbox, settings)
    if name == "filter":
        from .filter import FilterSettings, FilterStage

        return FilterStage(config.settings(name, FilterSettings))
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(RECORD_STAGES)}")


def stage_records(
    name: str,
    source: str | Path,
    config: SynthConfig,
    needs: tuple[str, ...],
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    skip_invalid: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """``(records, skipped)``: a stage's input (problems for ``solve``, the previous stage's
    JSONL otherwise), the first ``limit``, then this shard. Bad lines raise
    :class:`InputError` naming file and line, or are skipped and listed with ``skip_invalid``."""
    if name == "solve":
        records, errors = load_problems(str(source), config.fields, limit)
        if errors and not skip_invalid:
            raise InputError(errors[0] + " (or pass --skip-invalid to skip such rows)")
    else:
        records, errors = read_records(Path(source), needs, skip_invalid)
        records = records[:limit] if limit is not None else records
    return in_shard(records, shard), errors


def run_one(
    name: str,
    config: SynthConfig,
    source: str | Path,
    output: Path,
    tools: SynthTools,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    pool: RayPool | None = None,
) -> StageSummary:
    """One record stage from ``source`` into ``output``, with ``tools`` here or on ``pool``'s
    actors (then the stage is built here without a sandbox, for its settings alone)."""
    if pool is None:
        stage = tools.stage(name, output)
    else:
        stage = build_stage(name, config, tools.engines, None, output)
    records, skipped = stage_records(
        name, source, config, stage.needs, limit=limit, shard=shard, skip_invalid=skip_invalid
    )
    summary = run_stage(
        stage,
        records,
        output,
        concurrency=config.concurrency,
        skip_invalid=skip_invalid,
        progress=progress,
        pool=pool,
    )
    summary.skipped[:0] = skipped
    if not records and not skipped:
        where = "" if shard is None else f"shard {shard[0]}/{shard[1]} of "
        summary.note = f"{where}{source} has no records"
    return summary


def run_export(source: Path, out_dir: Path, config: SynthConfig) -> dict[str, Any]:
    """Export the filter's kept records (``source``) to ``out_dir``."""
    from .export import export_dataset

    records, _ = read_records(source, ("id",))
    return export_dataset(records, out_dir, {"config": config.source, **config.raw})


def run_chain(
    config: SynthConfig,
    source: str,
    out: Path,
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    on_stage=None,
    ray: RayOptions | None = None,
) -> tuple[list[StageSummary], dict[str, Any]]:
    """Every stage in order into ``out``: ``<stage>.jsonl`` each, then ``export/``.
    ``on_stage(summary)`` is called as each stage finishes (W&B logging). With ``ray``, one
    set of actors serves every stage. ``out/run.lock`` keeps a second run off the folder."""
    with output_lock(out / "run"):
        tools = SynthTools(config)
        pool = open_pool(ray, config)
        summaries = []
        previous: str | Path = source
        try:
            for name in RECORD_STAGES:
                output = out / f"{name}.jsonl"
                summary = run_one(
                    name,
                    config,
                    previous,
                    output,
                    tools,
                    limit=limit if name == "solve" else None,
                    shard=shard if name == "solve" else None,
                    skip_invalid=skip_invalid,
                    progress=progress,
                    pool=pool,
                )
                summaries.append(summary)
                if on_stage is not None:
                    on_stage(summary)
                previous = output
        finally:
            if pool is not None:
                pool.close()
            tools.close()
        exported = run_export(out / "filter.jsonl", out / EXPORT_DIR, config)
    return summaries, exported
