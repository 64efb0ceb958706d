"""A synthesis config is checked whole before anything starts: every stage's settings (types and
values), every engine section, the sandbox and concurrency; each error names the file, the key
and what is allowed, and ``genprm-synth`` exits 2 with no engine built."""

import json
from pathlib import Path

import pytest
import yaml

import data_synthesis.cli
import data_synthesis.pipeline
from data_synthesis.cli import main
from data_synthesis.config import ConfigError, load_config
from data_synthesis.validate import validate
from tests.support.paths import REPO


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(text)
    return path


@pytest.fixture
def no_engine(monkeypatch):
    """Fails the test if an engine or a sandbox is started."""

    def refuse(*args, **kwargs):
        pytest.fail("an engine or sandbox was started before the config was checked")

    monkeypatch.setattr(data_synthesis.pipeline, "make_engine", refuse)
    monkeypatch.setattr(data_synthesis.pipeline, "make_sandbox", refuse)
    monkeypatch.setattr(data_synthesis.cli, "make_engine", refuse)


@pytest.mark.parametrize("name", ["cpu-default.yml", "paper.yml"])
def test_the_shipped_configs_pass(name):
    validate(load_config(REPO / "configs" / name))


BAD_CONFIGS = [
    ("label: {method: rpee}", ["`label`", "method", "'rpee'", "rpe, hard, diff"]),
    ("rollout: {initial_k: -4}", ["`rollout`", "initial_k", "at least 1", "-4"]),
    ("solve: {samples: 0}", ["`solve`", "samples", "at least 1"]),
    ("solve: {samples: four}", ["`solve.samples`", "an integer", "'four'"]),
    ("solve: {max_tokens: true}", ["`solve.max_tokens`", "an integer", "True"]),
    ("solve: {seed: '0'}", ["`solve.seed`", "an integer or null"]),
    ("rollout: {k_hard: 1.5}", ["`rollout.k_hard`", "an integer", "1.5"]),
    ("rollout: {early_stop: 1}", ["`rollout.early_stop`", "true or false"]),
    ("label: {epsilon: '0.8'}", ["`label.epsilon`", "a number"]),
    ("rationale: {template: 3}", ["`rationale.template`", "a string or null"]),
    ("rationale: {judge_sample: 3}", ["`rationale.judge_sample`", "judge_samples"]),
    ("export: {cards: 1}", ["`export.cards`", "no settings"]),
    ("concurrency: true", ["`concurrency`", "a positive integer", "True"]),
    ("concurrency: 0", ["`concurrency`", "a positive integer"]),
    ("sandbox: {workers: '2'}", ["`sandbox.workers`", "an integer", "'2'"]),
    ("sandbox: {workers: 0}", ["`sandbox.workers`", "at least 1"]),
    ("sandbox: {worker: 2}", ["`sandbox.worker`", "did you mean workers?"]),
    ("sandbox: {bwrap: 'no'}", ["`sandbox.bwrap`", "true or false"]),
    (
        "engines: {policy: {engine: vlm}}",
        ["`engines.policy.engine`", "'vlm'", "did you mean vllm?", "vllm, openai"],
    ),
    (
        "engines: {policy: {engine: vllm, enforce_eagre: true}}",
        ["`engines.policy.enforce_eagre`", "did you mean enforce_eager?"],
    ),
    (
        "engines: {policy: {engine: vllm, max_model_len: '2048'}}",
        ["`engines.policy.max_model_len`", "an integer or null", "'2048'"],
    ),
    ("engines: {rollout: {engine: openai}}", ["`engines.rollout`", "needs base_urls"]),
    (
        "engines: {rollout: {engine: openai, base_urls: [http://a/v1], timeout: 5}}",
        ["`engines.rollout.timeout`", "did you mean timeout_s?"],
    ),
    (
        "engines: {rollout: {engine: openai, base_urls: http://a/v1, retries: 1.5}}",
        ["`engines.rollout.retries`", "an integer", "1.5"],
    ),
    (
        "engines: {rollout: {engine: openai, base_urls: [http://a/v1], max_concurrency: 0}}",
        ["`engines.rollout`", "max_concurrency must be at least 1, got 0"],
    ),
    (
        "engines: {rollout: {engine: openai, base_urls: [http://a/v1], timeout_s: 0}}",
        ["`engines.rollout`", "timeout_s must be a positive number of seconds"],
    ),
    (
        "engines: {rationale: {engine: openai, base_urls: [1]}}",
        ["`engines.rationale.base_urls`", "a string or a list of strings"],
    ),
]


@pytest.mark.parametrize(("text", "named"), BAD_CONFIGS)
def test_a_bad_key_or_value_is_one_line_naming_file_key_and_what_is_allowed(tmp_path, text, named):
    path = config_file(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as excinfo:
        validate(load_config(path))
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in named:
        assert part in message


def test_vllm_options_are_checked_against_vllms_own_where_it_is_installed(tmp_path, monkeypatch):
    import genprm.backends

    monkeypatch.setattr(genprm.backends, "vllm_option_names", lambda: {"max_num_seqs"})
    path = config_file(tmp_path, "engines: {policy: {engine: vllm, max_num_seqs: 8}}\n")
    validate(load_config(path))
    path.write_text("engines: {policy: {engine: vllm, max_num_seq: 8}}\n")
    with pytest.raises(ConfigError, match=r"`engines.policy.max_num_seq`.*max_num_seqs"):
        validate(load_config(path))


def test_vllm_options_unknown_to_us_pass_where_vllm_is_not_installed(tmp_path, monkeypatch):
    """Without vllm its own options are unknown: only near misses of ours are errors."""
    import genprm.backends

    monkeypatch.setattr(genprm.backends, "vllm_option_names", lambda: None)
    path = config_file(tmp_path, "engines: {policy: {engine: vllm, max_num_seqs: 8}}\n")
    validate(load_config(path))


def problems(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    return path


@pytest.mark.parametrize(
    "text", ["label: {method: rpee}", "rollout: {initial_k: -4}", "sandbox: {workers: '2'}"]
)
def test_run_refuses_a_bad_config_before_any_stage(tmp_path, capsys, no_engine, text):
    path = config_file(tmp_path, text + "\n")
    out = tmp_path / "out"
    argv = ["run", str(path), "--input", str(problems(tmp_path)), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"genprm-synth: {path}: ")
    assert not (out / "solve.jsonl").exists()


@pytest.mark.parametrize("stage", ["solve", "rollout", "label", "rationale", "filter"])
def test_each_stage_command_refuses_a_bad_config_before_it_starts(
    tmp_path, capsys, no_engine, stage
):
    path = config_file(tmp_path, "label: {method: rpee}\n")
    output = tmp_path / f"{stage}.jsonl"
    argv = [stage, "--input", str(problems(tmp_path)), "--output", str(output)]
    assert main([*argv, "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: " in error and "method" in error and "rpe, hard, diff" in error
    assert not output.exists()


def test_embedded_stages_take_the_preset_where_the_config_is_silent():
    from data_synthesis.config import EMBEDDED_STAGE_SETTINGS, SynthConfig

    config = SynthConfig(stages={"rollout": {"max_tokens": 64}})
    note = config.with_embedded_preset()
    assert config.stages["solve"] == EMBEDDED_STAGE_SETTINGS["solve"]
    assert config.stages["rollout"] == {**EMBEDDED_STAGE_SETTINGS["rollout"], "max_tokens": 64}
    assert "solve.max_tokens 192" in note and "rollout.max_tokens" not in note
    served = SynthConfig(engines={"policy": {"engine": "vllm", "model": "Qwen/Qwen2.5-7B"}})
    served.with_embedded_preset()
    assert "solve" not in served.stages and "rollout" in served.stages  # per role
    flagged = SynthConfig()
    assert flagged.with_embedded_preset({"engine": "openai", "base_urls": ["http://x"]}) is None
    assert flagged.stages == {}


def test_the_cpu_config_is_the_embedded_preset():
    """configs/cpu-default.yml (the demo's) sets what the preset fills, to the same values."""
    from data_synthesis.config import EMBEDDED_STAGE_SETTINGS

    config = yaml.safe_load((REPO / "configs" / "cpu-default.yml").read_text())
    for stage, preset in EMBEDDED_STAGE_SETTINGS.items():
        assert {key: config[stage][key] for key in preset} == preset


def test_configs_name_the_file_and_key(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("solve: {samplez: 3}\n")
    config = load_config(path)
    from data_synthesis.label import LabelSettings

    with pytest.raises(ConfigError, match="unknown key"):
        config.settings("solve", LabelSettings)
    path.write_text("engines: {judge: {engine: vllm}}\n")
    with pytest.raises(ConfigError, match=r"c.yml: unknown role `engines.judge`"):
        load_config(path)
    path.write_text("stages: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(path)
