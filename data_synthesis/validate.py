"""The whole config checked before anything starts: ``genprm-synth run`` and every stage command
call :func:`validate` first, so a bad value in a late stage's section fails before the early
stages spend engine time."""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from genprm import backends
from genprm.sandbox import Sandbox

from .config import SANDBOX_KEYS, ConfigError, SynthConfig, check_keys, check_types
from .filter import FilterSettings
from .label import LabelSettings
from .rationale import RationaleSettings
from .rollout import RolloutSettings
from .solve import SolveSettings

# A vLLM option we do not know, where vllm is not installed to say, is refused only this close
# to one of the vllm engine's named options (a typo of ours, not an option of vLLM's).
NEAR_MISS = 0.8


@dataclass(frozen=True)
class ExportSettings:
    """The export stage has no settings: its section stays empty."""


SETTINGS = {
    "solve": SolveSettings,
    "rollout": RolloutSettings,
    "label": LabelSettings,
    "rationale": RationaleSettings,
    "filter": FilterSettings,
    "export": ExportSettings,
}


def validate(config: SynthConfig) -> None:
    """Every stage's settings, every engine section and the sandbox; a ConfigError names the
    file, the key and what it takes."""
    for stage, settings_class in SETTINGS.items():
        config.settings(stage, settings_class)
    for role, options in config.engines.items():
        check_engine(config.source, f"engines.{role}", options)
    check_sandbox(config.source, config.sandbox)


def check_engine(source: str, where: str, options: dict[str, Any]) -> None:
    """``make_engine`` options: a known engine, its constructor's keyword arguments (for vllm,
    also vLLM's own options), each of its annotated type, none it needs missing."""
    name = options.get("engine", "vllm")
    if name not in backends.ENGINES:
        nearest = difflib.get_close_matches(str(name), backends.ENGINES, n=1)
        hint = f"did you mean {nearest[0]}? " if nearest else ""
        raise ConfigError(
            f"{source}: `{where}.engine` is {name!r}; {hint}engines: {', '.join(backends.ENGINES)}"
        )
    engine = backends.engine_class(name)
    parameters = dict(inspect.signature(engine.__init__).parameters)
    del parameters["self"]
    passes_on = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind is not p.VAR_KEYWORD]
    given = {key: value for key, value in options.items() if key != "engine"}
    if not passes_on:
        check_keys(source, where, given, named)
    elif (vllm_names := backends.vllm_option_names()) is not None:
        check_keys(source, where, given, sorted({*named, *vllm_names}))
    else:
        typos = [key for key in given if _near_miss(key, named)]
        check_keys(source, where, typos, named, NEAR_MISS)
    missing = [n for n in named if parameters[n].default is inspect.Parameter.empty]
    missing = [n for n in missing if n not in given]
    if missing:
        raise ConfigError(f"{source}: `{where}` needs {missing[0]} for engine {name}")
    check_types(source, where, given, typing.get_type_hints(engine.__init__))
    if name == "openai":
        from genprm.backends.openai_engine import check_limits

        try:
            check_limits(**given)
        except ValueError as error:
            raise ConfigError(f"{source}: `{where}`: {error}") from None


def _near_miss(key: str, named: list[str]) -> bool:
    return key not in named and bool(difflib.get_close_matches(key, named, 1, NEAR_MISS))


def check_sandbox(source: str, sandbox: dict[str, Any]) -> None:
    hints = typing.get_type_hints(Sandbox.__init__)
    check_types(source, "sandbox", sandbox, {key: hints[key] for key in SANDBOX_KEYS})
    if sandbox.get("workers", 1) < 1:
        raise ConfigError(
            f"{source}: `sandbox.workers` must be at least 1, got {sandbox['workers']}"
        )
    if sandbox.get("timeout", 1) <= 0:
        raise ConfigError(
            f"{source}: `sandbox.timeout` must be a positive number of seconds, "
            f"got {sandbox['timeout']}"
        )
