"""Synthesis configs (``configs/*.yml``): the input's fields, one engine per role, the sandbox,
and one section of settings per stage.

```yaml
input: {problem_field: null, answer_field: answer, id_field: null, split: train}
engines:            # make_engine() options per role; roles with equal options share an engine
  policy: {engine: vllm, model: Qwen/Qwen2.5-7B-Instruct, tensor_parallel_size: 1}
  rollout: {engine: openai, base_urls: [http://node1:8000/v1]}
  rationale: {engine: openai, base_urls: [http://node2:8000/v1, http://node3:8000/v1]}
sandbox: {workers: 8, bwrap: false}
concurrency: 64     # input records in flight per stage
solve: {samples: 8}
rollout: {k_hard: 128}
label: {method: rpe, epsilon: 0.8}
rationale: {judge_samples: 4}
filter: {}
```
Every key is checked: a misspelt one is an error naming the file and the section.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genprm.cli import ENGINE_DEFAULTS
from genprm.problems import ProblemFields

STAGES = ("solve", "rollout", "label", "rationale", "filter", "export")
ROLES = ("policy", "rollout", "rationale")
SANDBOX_KEYS = ("workers", "bwrap", "timeout")


# Where a config leaves them out, the stages whose engine runs the embedded SmolLM2-135M-Instruct
# take configs/cpu-default.yml's settings: the defaults are for 7B+ models on GPUs, and a 135M
# model fills every token budget (a laptop run then takes minutes, not hours).
EMBEDDED_STAGE_SETTINGS = {
    "solve": {"samples": 4, "rounds": 2, "max_tokens": 192},
    "rollout": {"initial_k": 4, "k_hard": 4, "k_medium": 4, "k_easy": 4, "max_tokens": 128},
    "rationale": {"max_tokens": 384, "max_code_rounds": 4},
}
STAGE_ROLES = {"solve": "policy", "rollout": "rollout", "rationale": "rationale"}
# ... and their engines the embedded model's engine options (no compilation, float32)
EMBEDDED_ENGINE = {dest: small for dest, (_, small) in ENGINE_DEFAULTS.items()}


class ConfigError(ValueError):
    """A config that cannot be used (the message names the file and the key)."""


@dataclass
class SynthConfig:
    """A loaded config. ``stages`` holds each stage's raw section (checked against the stage's
    settings class when the stage is built); ``raw`` is the whole file, for the dataset card."""

    source: str = "defaults"
    fields: ProblemFields = ProblemFields()
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 64
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def engine_options(self, role: str) -> dict[str, Any]:
        """``make_engine`` options of ``role``: the embedded model on vLLM when unset."""
        options = dict(self.engines.get(role) or {"engine": "vllm"})
        options.setdefault("engine", "vllm")
        return options

    def with_embedded_preset(self, flags_engine: dict[str, Any] | None = None) -> str | None:
        """Fill the settings of :data:`EMBEDDED_STAGE_SETTINGS` that the config leaves out, in
        the stages whose engine (``flags_engine`` where a command's flags choose it for every
        role, else the config's) is the embedded model; the line that names them, or None."""
        filled = []
        if flags_engine is None:
            for role in ROLES:
                options = self.engine_options(role)
                if options["engine"] == "vllm" and not options.get("model"):
                    added = {k: v for k, v in EMBEDDED_ENGINE.items() if k not in options}
                    self.engines[role] = {**options, **added}
                    filled += [f"engines.{role}.{key} {value}" for key, value in added.items()]
        for stage, preset in EMBEDDED_STAGE_SETTINGS.items():
            options = flags_engine or self.engine_options(STAGE_ROLES[stage])
            if options.get("engine") != "vllm" or options.get("model"):
                continue
            section = self.stages.setdefault(stage, {})
            added = {key: value for key, value in preset.items() if key not in section}
            section.update(added)
            filled += [f"{stage}.{key} {value}" for key, value in added.items()]
        if not filled:
            return None
        return (
            f"the embedded model's preset: {', '.join(filled)} (with a model in the engine, "
            "the defaults; a key the config sets wins)"
        )

    def settings(self, stage: str, settings_class: type) -> Any:
        """The stage's settings dataclass from its section; unknown keys, values of another type
        than the field's and values the class refuses are errors."""
        section = self.stages.get(stage) or {}
        names = [f.name for f in dataclasses.fields(settings_class)]
        check_keys(self.source, stage, section, names)
        check_types(self.source, stage, section, typing.get_type_hints(settings_class))
        try:
            return settings_class(**section)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.source}: `{stage}`: {error}") from None


def load_config(path: Path | str | None) -> SynthConfig:
    """Read a config file; None gives the defaults (the embedded model in every role)."""
    if path is None:
        return SynthConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not YAML ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    unknown = sorted(set(raw) - {"input", "engines", "sandbox", "concurrency", *STAGES})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(unknown)}")
    source = str(path)
    fields = _section(raw, "input", source)
    check_keys(source, "input", fields, [f.name for f in dataclasses.fields(ProblemFields)])
    check_types(source, "input", fields, typing.get_type_hints(ProblemFields))
    engines = _section(raw, "engines", source)
    for role, options in engines.items():
        if role not in ROLES:
            raise ConfigError(f"{source}: unknown role `engines.{role}`; roles: {', '.join(ROLES)}")
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: `engines.{role}` must be a mapping of engine options")
    sandbox = _section(raw, "sandbox", source)
    check_keys(source, "sandbox", sandbox, list(SANDBOX_KEYS))
    concurrency = raw.get("concurrency", 64)
    if not fits(concurrency, int) or concurrency < 1:
        raise ConfigError(
            f"{source}: `concurrency` must be a positive integer (input records in flight per "
            f"stage), got {concurrency!r}"
        )
    return SynthConfig(
        source=source,
        fields=ProblemFields(**fields),
        engines=engines,
        sandbox=sandbox,
        concurrency=concurrency,
        stages={stage: _section(raw, stage, source) for stage in STAGES},
        raw=raw,
    )


def _section(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: `{name}` must be a mapping")
    return section


def check_keys(source: str, where: str, given, known: list[str], cutoff: float = 0.6) -> None:
    """A ConfigError naming the first key of ``given`` not in ``known`` and the nearest known
    one (or all of them)."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    nearest = difflib.get_close_matches(unknown[0], known, n=1, cutoff=cutoff)
    if nearest:
        hint = f"did you mean {nearest[0]}?"
    else:
        hint = f"`{where}` takes " + (", ".join(sorted(known)) or "no settings")
    raise ConfigError(f"{source}: unknown key `{where}.{unknown[0]}`; {hint}")


def check_types(source: str, where: str, values: dict[str, Any], hints: dict[str, Any]) -> None:
    """A ConfigError naming the first value that does not fit its key's annotation."""
    for key, value in values.items():
        if key in hints and not fits(value, hints[key]):
            raise ConfigError(
                f"{source}: `{where}.{key}` must be {describe(hints[key])}, got {value!r}"
            )


def fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as YAML reads it) is of the type ``annotation`` names: booleans are not
    numbers, integers are numbers; an annotation this does not know admits anything."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if typing.get_origin(annotation) is list:
        return isinstance(value, list) and all(fits(item, args[0]) for item in value)
    if annotation is None or annotation is type(None):
        return value is None
    return not isinstance(annotation, type) or isinstance(value, annotation)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(annotation: Any) -> str:
    """``int | None`` -> "an integer or null"."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {_PLURALS.get(item, describe(item))}"
    if annotation is None or annotation is type(None):
        return "null"
    return _KINDS.get(annotation, getattr(annotation, "__name__", str(annotation)))
