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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .problems import ProblemFields

STAGES = ("solve", "rollout", "label", "rationale", "filter", "export")
ROLES = ("policy", "rollout", "rationale")
SANDBOX_KEYS = ("workers", "bwrap", "timeout")


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

    def settings(self, stage: str, settings_class: type) -> Any:
        """The stage's settings dataclass from its section; unknown keys are an error."""
        section = self.stages.get(stage) or {}
        names = {f.name for f in dataclasses.fields(settings_class)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ConfigError(
                f"{self.source}: unknown key(s) in `{stage}`: {', '.join(unknown)}; "
                f"{settings_class.__name__} has {', '.join(sorted(names)) or 'no settings'}"
            )
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
    names = {f.name for f in dataclasses.fields(ProblemFields)}
    if set(fields) - names:
        raise ConfigError(
            f"{source}: unknown key(s) in `input`: {', '.join(sorted(set(fields) - names))}"
        )
    engines = _section(raw, "engines", source)
    for role, options in engines.items():
        if role not in ROLES:
            raise ConfigError(f"{source}: unknown role `engines.{role}`; roles: {', '.join(ROLES)}")
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: `engines.{role}` must be a mapping of engine options")
    sandbox = _section(raw, "sandbox", source)
    if set(sandbox) - set(SANDBOX_KEYS):
        raise ConfigError(f"{source}: `sandbox` takes {', '.join(SANDBOX_KEYS)}")
    concurrency = raw.get("concurrency", 64)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"{source}: `concurrency` must be a positive integer")
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
