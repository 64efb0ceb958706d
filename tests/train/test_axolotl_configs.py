"""The shipped axolotl configs pass axolotl 0.19's own validation, offline, and say what the
GenPRM paper says (arXiv 2504.00891: lr 2e-6, global batch 64, 8192-token sequences).

``axolotl.cli.config.load_cfg`` cannot run here: it fetches the base model's config from the hub
and initialises DeepSpeed with NCCL. ``validate_config`` is the part of it that checks keys and
values, and it runs offline, so these tests call it the way ``load_cfg`` does: register the
plugins, then validate with the machine's capabilities.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from axolotl.integrations.base import PluginManager
from axolotl.utils.config import prepare_plugins, validate_config
from axolotl.utils.dict import DictDefault

from tests.support.paths import REPO

CONFIG_DIR = REPO / "axolotl_configs"
DEEPSPEED_DIR = CONFIG_DIR / "deepspeed"

PLUGIN = "genprm_train.GenPRMPlugin"
DATASET_TYPE = "genprm_train.prompt_strategy"
GENPRM_KEYS = ("genprm_train_on_code_output", "genprm_dataset_stats")

# The paper's training setup; the GPU configs assume one 8-GPU node.
PAPER_GPUS = 8
PAPER_GLOBAL_BATCH = 64
PAPER_LR = 2e-6
PAPER_SEQUENCE_LEN = 8192

FULL_SFT = {
    "genprm-1.5b.yml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "genprm-7b.yml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "genprm-32b.yml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
}
LORA = "genprm-7b-lora.yml"
# genprm-7b.yml with sample packing: faster, but about 3x the paper's conversations per step
PACKED = "genprm-7b-packed.yml"
PACKED_RECIPE = "genprm-7b.yml"
# Keys whose values differ from genprm-7b.yml: the packing, and where the run writes.
PACKED_DIFFERENT_KEYS = {"sample_packing", "pad_to_sequence_len", "output_dir", "wandb_name"}
CPU = "genprm-smollm2-cpu.yml"
GPU_CONFIGS = sorted([*FULL_SFT, LORA, PACKED])
SFT_CONFIGS = sorted([*GPU_CONFIGS, CPU])
# GRPO of a policy against a served GenPRM verifier (genprm_train.reward)
GRPO_CPU = "genprm-grpo-smollm2-cpu.yml"
GRPO_GPU = "grpo-qwen2.5-math-7b-genprm.yml"
GRPO_CONFIGS = sorted([GRPO_CPU, GRPO_GPU])
CPU_CONFIGS = (CPU, GRPO_CPU)
# genprm-7b.yml's recipe on 2 nodes x 8 GPUs through Ray Train (axolotl's `use_ray`)
RAY = "genprm-7b-ray.yml"
RAY_RECIPE = "genprm-7b.yml"
RAY_WORKERS = 16
# Keys of the Ray config that genprm-7b.yml does not have: how Ray launches it, and `ddp: true`,
# which a torchrun/accelerate launch gets from WORLD_SIZE but axolotl's Ray driver sets false.
RAY_ONLY_KEYS = {"use_ray", "ray_run_name", "ray_num_workers", "resources_per_worker", "ddp"}
# Keys whose values differ: where the run writes (storage every node sees) and what it is called,
# and the accumulation that keeps the global batch at 64 on 16 GPUs.
RAY_DIFFERENT_KEYS = {
    "output_dir",
    "dataset_prepared_path",
    "wandb_name",
    "gradient_accumulation_steps",
}
ALL_CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yml"))
REWARD_FUNC = "genprm_train.reward.genprm_reward"

# An 8 x H100 node, as axolotl.cli.config.gpu_capabilities() would report it there.
H100_CAPABILITIES = {
    "bf16": True,
    "fp8": False,
    "tf32": True,
    "n_gpu": PAPER_GPUS,
    "compute_capability": "sm_90",
}

# DeepSpeed keys that transformers' HfTrainerDeepSpeedConfig fills when they say "auto".
HF_AUTO_KEYS = {
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "optimizer.params.lr",
    "optimizer.params.betas",
    "optimizer.params.eps",
    "optimizer.params.weight_decay",
    "scheduler.params.warmup_min_lr",
    "scheduler.params.warmup_max_lr",
    "scheduler.params.total_num_steps",
    "scheduler.params.warmup_num_steps",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))


def env_capabilities() -> dict:
    import torch

    return {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}


@pytest.fixture(autouse=True)
def isolated_plugin_manager():
    """PluginManager is a process-wide singleton: start every test with no plugins registered
    and give back whatever other tests had registered."""
    manager = PluginManager.get_instance()
    saved_plugins = collections.OrderedDict(manager.plugins)
    saved_cfg = manager.cfg
    manager.plugins.clear()
    yield manager
    manager.plugins.clear()
    manager.plugins.update(saved_plugins)
    manager.cfg = saved_cfg


@pytest.fixture
def validate(monkeypatch):
    """Validate a raw config dict like ``load_cfg`` does, without the hub or NCCL."""

    def _validate(raw: dict, name: str) -> DictDefault:
        cfg = DictDefault(copy.deepcopy(raw))
        prepare_plugins(cfg)
        if name in CPU_CONFIGS:
            from axolotl.cli.config import gpu_capabilities

            capabilities, env = gpu_capabilities()  # this machine, as `axolotl train` sees it
        else:
            # Not this machine's CUDA: whether flash-attn is installed here is not the config's
            # business (axolotl skips that check on CPU-only hosts).
            import torch

            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
            capabilities, env = H100_CAPABILITIES, env_capabilities()
        return validate_config(cfg, capabilities=capabilities, env_capabilities=env)

    return _validate


def test_expected_configs_are_shipped():
    assert ALL_CONFIGS == sorted([*SFT_CONFIGS, *GRPO_CONFIGS, RAY])


@pytest.mark.parametrize("name", SFT_CONFIGS)
def test_config_validates_and_keeps_genprm_keys(name, validate):
    raw = load_yaml(name)
    assert raw["plugins"] == [PLUGIN]
    assert raw["genprm_train_on_code_output"] is False
    assert [ds["type"] for ds in raw["datasets"]] == [DATASET_TYPE]

    cfg = validate(raw, name)

    assert PLUGIN in PluginManager.get_instance().plugins
    assert cfg.plugins == [PLUGIN]
    assert cfg.genprm_train_on_code_output is False
    assert cfg.genprm_dataset_stats is True  # the plugin's default, filled in by the schema
    assert [ds["type"] for ds in cfg.datasets] == [DATASET_TYPE]
    assert cfg.output_dir == f"outputs/{Path(name).stem}"
    assert cfg.wandb_project == "genprm"
    assert cfg.wandb_name == Path(name).stem


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_has_no_unknown_or_deprecated_keys(name, validate):
    """Axolotl drops keys it does not know and strips deprecated ones (e.g. 0.19 turns
    `flash_attention: true` into `attn_implementation`): every key written must be live."""
    from axolotl.integrations.config import merge_input_args
    from axolotl.utils.schemas.datasets import SFTDataset

    raw = load_yaml(name)
    prepare_plugins(DictDefault(copy.deepcopy(raw)))
    _, input_config = merge_input_args()
    fields = input_config.model_fields
    unknown = sorted(set(raw) - set(fields))
    assert not unknown, f"{name}: keys axolotl 0.19 does not know: {unknown}"
    deprecated = sorted(key for key in raw if fields[key].deprecated)
    assert not deprecated, f"{name}: deprecated keys: {deprecated}"
    for ds in raw["datasets"]:
        assert not set(ds) - set(SFTDataset.model_fields), ds


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_deepspeed_path_exists_with_the_right_stage(name):
    raw = load_yaml(name)
    text = (CONFIG_DIR / name).read_text(encoding="utf-8")
    # The `deepspeed:` key and any file a comment points users to, relative to the repo root.
    mentioned = set(re.findall(r"axolotl_configs/deepspeed/[\w.-]+\.json", text))
    if raw.get("deepspeed"):
        assert raw["deepspeed"] in mentioned
        assert not Path(raw["deepspeed"]).is_absolute()
    for rel in mentioned:
        path = REPO / rel
        assert path.is_file(), f"{name} names {rel}, which does not exist"
        json.loads(path.read_text(encoding="utf-8"))

    if name in CPU_CONFIGS:
        assert "deepspeed" not in raw
        return
    stage = json.loads((REPO / raw["deepspeed"]).read_text())["zero_optimization"]["stage"]
    assert stage == (2 if name == LORA else 3)


def global_batch(cfg, gpus: int) -> int:
    return cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"] * gpus


def stated_gpu_count(name: str) -> int:
    """The GPU count the config's header comment says it assumes."""
    counts = {int(n) for n in re.findall(r"Assumes (\d+) GPUs", header(name))}
    assert len(counts) == 1, f"{name}: the header must state one assumed GPU count"
    return counts.pop()


def header(name: str) -> str:
    """The config's leading comment block as one line of text."""
    lines = (CONFIG_DIR / name).read_text(encoding="utf-8").splitlines()
    comments = itertools.takewhile(lambda line: line.startswith("#"), lines)
    return " ".join(line.lstrip("#").strip() for line in comments)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_matches_the_paper(name, validate):
    raw = load_yaml(name)
    # PyYAML reads `2e-6` as a string; the configs must write a float.
    assert isinstance(raw["learning_rate"], float)
    assert stated_gpu_count(name) == PAPER_GPUS
    assert global_batch(raw, PAPER_GPUS) == PAPER_GLOBAL_BATCH

    cfg = validate(raw, name)

    assert global_batch(cfg, PAPER_GPUS) == PAPER_GLOBAL_BATCH
    assert cfg.sequence_len == PAPER_SEQUENCE_LEN
    # Packing only in genprm-7b-packed.yml; elsewhere one conversation per row, padded to the
    # batch's longest row: 64 conversations per step.
    assert cfg.sample_packing is (name == PACKED)
    assert cfg.pad_to_sequence_len is (name == PACKED)
    assert cfg.bf16 is True
    assert cfg.attn_implementation == "flash_attention_2"
    assert cfg.gradient_checkpointing is True
    assert cfg.lr_scheduler == "cosine"
    assert cfg.warmup_ratio == pytest.approx(0.03)
    assert cfg.num_epochs == 3
    assert cfg.dataset_prepared_path == "last_run_prepared"
    assert [(ds["path"], ds.get("split")) for ds in cfg.datasets] == [
        ("GenPRM/GenPRM-MATH-Data", "train")
    ]
    # Long jobs resume after a crash: full checkpoints, picked up again automatically.
    assert cfg.save_strategy == "steps" and not cfg.save_only_model
    assert cfg.auto_resume_from_checkpoints is True


@pytest.mark.parametrize("name", [*GPU_CONFIGS, RAY])
def test_gpu_recipe_header_states_its_batch_of_64(name, validate):
    """The header's "= m x a x GPUs = 64 conversations" is the config's own micro batch,
    accumulation and assumed GPU count, and the 64 are conversations only without packing."""
    raw = load_yaml(name)
    found = re.findall(r"= (\d+) x (\d+) x (\d+) = (\d+) (conversations|rows)", header(name))
    assert len(found) == 1, f"{name}: the header must state its batch once"
    micro, accumulation, gpus, batch = map(int, found[0][:4])
    assert micro * accumulation * gpus == batch == PAPER_GLOBAL_BATCH
    assert gpus == stated_gpu_count(name) == raw.get("ray_num_workers", gpus)
    assert (micro, accumulation) == (raw["micro_batch_size"], raw["gradient_accumulation_steps"])

    packed = name == PACKED
    assert found[0][4] == ("rows" if packed else "conversations")
    assert validate(raw, name).sample_packing is packed
    if packed:  # what packing trades, said where the user picks the config
        assert "3x" in header(name) and "genprm/conversations_per_step" in header(name)


def test_packed_config_is_the_7b_recipe_with_packing():
    packed, recipe = load_yaml(PACKED), load_yaml(PACKED_RECIPE)
    assert set(packed) == set(recipe)
    assert {key for key in recipe if packed[key] != recipe[key]} == PACKED_DIFFERENT_KEYS
    assert packed["sample_packing"] is True and packed["pad_to_sequence_len"] is True


@pytest.mark.parametrize("name", sorted(FULL_SFT))
def test_full_sft_configs(name, validate):
    cfg = validate(load_yaml(name), name)
    assert cfg.base_model == FULL_SFT[name]
    assert cfg.learning_rate == pytest.approx(PAPER_LR)
    assert not cfg.adapter
    assert cfg.deepspeed == "axolotl_configs/deepspeed/zero3_bf16.json"


def test_32b_accumulates_more_than_the_smaller_models():
    accumulation = {name: load_yaml(name)["gradient_accumulation_steps"] for name in FULL_SFT}
    assert accumulation["genprm-32b.yml"] == max(accumulation.values())
    assert load_yaml("genprm-32b.yml")["micro_batch_size"] == 1


def test_lora_config(validate):
    cfg = validate(load_yaml(LORA), LORA)
    assert cfg.base_model == FULL_SFT["genprm-7b.yml"]
    assert cfg.adapter == "lora"
    assert (cfg.lora_r, cfg.lora_alpha) == (64, 128)
    assert cfg.lora_dropout == pytest.approx(0.05)
    assert cfg.lora_target_linear is True
    assert cfg.learning_rate == pytest.approx(10 * PAPER_LR)
    assert cfg.deepspeed == "axolotl_configs/deepspeed/zero2_bf16.json"


def test_cpu_config(validate, monkeypatch):
    raw = load_yaml(CPU)
    cfg = validate(raw, CPU)

    assert cfg.bf16 is False and cfg.fp16 is False and cfg.tf32 is False
    assert not cfg.bfloat16 and not cfg.float16
    assert cfg.attn_implementation == "sdpa"
    assert not cfg.attn_uses_flash_lib
    assert not cfg.deepspeed and not cfg.fsdp_config
    assert not cfg.adapter and not cfg.load_in_8bit and not cfg.load_in_4bit
    assert cfg.wandb_mode == "offline"
    assert cfg.sample_packing is False
    assert cfg.sequence_len == 1024
    assert cfg.optimizer == "adamw_torch"
    assert cfg.dataloader_num_workers == 0
    assert cfg.seed == 42
    assert cfg.val_set_size == 0
    assert (cfg.micro_batch_size, cfg.gradient_accumulation_steps) == (2, 1)
    # A checkpoint (with trainer_state.json) lands on the last step.
    assert cfg.save_strategy != "no"
    assert cfg.max_steps == 24 and cfg.max_steps % cfg.save_steps == 0

    # The paths are the ones `make model` / `make demo` write (GENPRM_CACHE_DIR=.cache/genprm).
    from genprm.paths import default_model_path

    monkeypatch.setenv("GENPRM_CACHE_DIR", str(REPO / ".cache" / "genprm"))
    assert REPO / cfg.base_model == default_model_path()
    [ds] = cfg.datasets
    assert ds["ds_type"] == "json"
    assert ds["path"] == ".cache/genprm/data/demo-train.jsonl"
    makefile = (REPO / "Makefile").read_text()
    assert "DEMO_DATA := $(GENPRM_CACHE_DIR)/data/demo-train.jsonl" in makefile
    assert f"CPU_CONFIG := axolotl_configs/{CPU}" in makefile


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("genprm_train_on_code_output", "maybe"),
        ("genprm_train_on_code_output", 3),
        ("genprm_train_on_code_output", "true"),
        ("genprm_dataset_stats", "yes"),
    ],
)
def test_bad_genprm_values_are_rejected_by_key(key, value, validate):
    raw = load_yaml(CPU)
    raw[key] = value
    with pytest.raises(ValueError) as excinfo:  # pydantic's ValidationError is a ValueError
        validate(raw, CPU)
    assert key in str(excinfo.value)


def test_genprm_keys_accept_true(validate):
    raw = load_yaml(CPU)
    raw["genprm_train_on_code_output"] = True
    raw["genprm_dataset_stats"] = False
    cfg = validate(raw, CPU)
    assert cfg.genprm_train_on_code_output is True
    assert cfg.genprm_dataset_stats is False


def _dotted(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


DEEPSPEED_FILES = sorted(p.name for p in DEEPSPEED_DIR.glob("*.json"))


def test_expected_deepspeed_files_are_shipped():
    assert DEEPSPEED_FILES == ["zero2_bf16.json", "zero3_bf16.json", "zero3_bf16_cpuoffload.json"]


@pytest.mark.parametrize("name", DEEPSPEED_FILES)
def test_deepspeed_config_is_complete_after_hf_fills_auto(name):
    """Run transformers' own "auto" filling (what HF Trainer does) for an 8-GPU bf16 run, then
    check the ZeRO block against DeepSpeed's schema, which forbids unknown keys."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers.integrations.deepspeed import (
        HfTrainerDeepSpeedConfig,
        unset_hf_deepspeed_config,
    )

    raw = json.loads((DEEPSPEED_DIR / name).read_text(encoding="utf-8"))
    autos = {key for key, value in _dotted(raw) if value == "auto"}
    assert autos <= HF_AUTO_KEYS, f"'auto' that nothing fills: {sorted(autos - HF_AUTO_KEYS)}"
    assert raw["bf16"]["enabled"] == "auto"

    args = SimpleNamespace(
        world_size=PAPER_GPUS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_grad_norm=1.0,
        learning_rate=PAPER_LR,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        save_on_each_node=False,
        fp16=False,
        fp16_full_eval=False,
        bf16=True,
        bf16_full_eval=False,
        get_warmup_steps=lambda total: 3,
    )
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=3584))
    try:
        ds = HfTrainerDeepSpeedConfig(copy.deepcopy(raw))
        ds.trainer_config_process(args)
        ds.trainer_config_finalize(args, model, num_training_steps=100)
        filled = ds.config
    finally:
        unset_hf_deepspeed_config()

    assert not [key for key, value in _dotted(filled) if value == "auto"]
    assert filled["train_batch_size"] == PAPER_GLOBAL_BATCH
    assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False

    zero = DeepSpeedZeroConfig(**filled["zero_optimization"])
    assert zero.overlap_comm is True and zero.contiguous_gradients is True
    if name.startswith("zero3"):
        assert zero.stage == 3
        # without it a ZeRO-3 save writes placeholder tensors instead of the weights
        assert zero.gather_16bit_weights_on_model_save is True
    else:
        assert zero.stage == 2
    if "cpuoffload" in name:
        assert zero.offload_optimizer.device == "cpu"
        # ZeRO-Offload refuses HF's torch optimizer: DeepSpeed must build its CPU Adam
        assert raw["optimizer"]["type"] == "AdamW"
    else:
        assert zero.offload_optimizer is None and zero.offload_param is None
        assert "optimizer" not in raw  # axolotl's `optimizer:` and scheduler stay in charge
    assert "scheduler" not in raw  # axolotl's cosine + warmup_ratio


@pytest.mark.parametrize("name", GRPO_CONFIGS)
def test_grpo_config_validates_with_the_genprm_reward(name, validate):
    from axolotl.core.trainers.grpo import GRPOStrategy

    from genprm_train.reward import genprm_reward

    raw = load_yaml(name)
    assert raw["plugins"] == [PLUGIN]
    cfg = validate(raw, name)

    assert cfg.rl == "grpo"
    assert cfg.trl.reward_funcs == [REWARD_FUNC]
    assert GRPOStrategy.get_reward_func(REWARD_FUNC) is genprm_reward  # axolotl's own loader
    assert cfg.trl.use_vllm is False  # vLLM lives in the other environment: HF generate here
    # every step's completions form whole groups of num_generations (axolotl checks >=)
    gpus = PAPER_GPUS if name == GRPO_GPU else 1
    assert global_batch(cfg, gpus) % (cfg.trl.num_generations * gpus) == 0
    reward = cfg.genprm_reward
    assert reward["base_urls"] and all(url.endswith("/v1") for url in reward["base_urls"])
    assert (reward["aggregation"], reward["answer_column"]) == ("min", "answer")
    assert reward["outcome_weight"] == 1.0 and reward["problem_column"] == "problem"
    # the dataset rows come from `python -m genprm_train.grpo`: no transform type
    [ds] = cfg.datasets
    assert ds["ds_type"] == "json" and not ds.get("type")
    assert ds["path"] == ".cache/genprm/data/grpo-gsm8k-train.jsonl"
    assert cfg.output_dir == f"outputs/{Path(name).stem}"
    assert cfg.wandb_project == "genprm" and cfg.wandb_name == Path(name).stem


def test_grpo_cpu_config(validate):
    cfg = validate(load_yaml(GRPO_CPU), GRPO_CPU)
    assert cfg.bf16 is False and cfg.fp16 is False and cfg.tf32 is False
    assert cfg.attn_implementation == "sdpa"
    assert not cfg.deepspeed and cfg.wandb_mode == "offline"
    assert cfg.base_model == load_yaml(CPU)["base_model"]  # the embedded model, as `make model`
    assert cfg.genprm_reward["mode"] == "direct"  # one short judgement per step on CPU
    assert cfg.trl.num_generations == 2 and cfg.trl.max_completion_length <= 64


def test_grpo_gpu_config(validate):
    raw = load_yaml(GRPO_GPU)
    assert isinstance(raw["learning_rate"], float)
    assert stated_gpu_count(GRPO_GPU) == PAPER_GPUS
    cfg = validate(raw, GRPO_GPU)
    assert cfg.base_model == "Qwen/Qwen2.5-Math-7B"
    assert cfg.bf16 is True and cfg.attn_implementation == "flash_attention_2"
    assert cfg.deepspeed == "axolotl_configs/deepspeed/zero3_bf16.json"
    assert cfg.genprm_reward["mode"] == "cot+code"
    assert len(cfg.genprm_reward["base_urls"]) > 1
    assert cfg.save_strategy == "steps" and cfg.auto_resume_from_checkpoints is True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"agregation": "min"}, "agregation"),
        ({"aggregation": "max"}, "aggregation"),
        ({"mode": "code"}, "mode"),
        ({"maj": 0}, "maj"),
        ({"base_urls": []}, "base_urls"),
    ],
)
def test_bad_genprm_reward_settings_are_rejected_by_key(change, named, validate):
    raw = load_yaml(GRPO_CPU)
    raw["genprm_reward"] = {**raw["genprm_reward"], **change}
    with pytest.raises(ValueError) as excinfo:
        validate(raw, GRPO_CPU)
    assert f"genprm_reward.{named}" in str(excinfo.value)


def test_the_plugin_connects_the_reward_or_says_what_is_missing(validate):
    """GenPRMPlugin.post_trainer_create with a trainer that uses genprm_reward: no block is an
    error; a block whose server is down fails there, before the first step."""
    from genprm.testing.local_server import free_port
    from genprm_train.plugin import GenPRMPlugin
    from genprm_train.reward import RewardServerError, genprm_reward

    trainer = SimpleNamespace(reward_funcs=[genprm_reward])
    raw = load_yaml(GRPO_CPU)
    del raw["genprm_reward"]
    with pytest.raises(ValueError, match="no `genprm_reward:` block"):
        GenPRMPlugin().post_trainer_create(validate(raw, GRPO_CPU), trainer)

    raw = load_yaml(GRPO_CPU)
    down = f"http://127.0.0.1:{free_port()}/v1"
    raw["genprm_reward"].update(base_urls=[down], retries=0)
    with pytest.raises(RewardServerError, match=re.escape(down)):
        GenPRMPlugin().post_trainer_create(validate(raw, GRPO_CPU), trainer)


# --- Multi-node: genprm-7b-ray.yml (axolotl 0.19's Ray Train launcher) -------------------------


def ray_driver_cfg(raw: dict) -> DictDefault:
    """What ``load_cfg`` does to the cfg on the Ray driver (axolotl/cli/config.py): register the
    plugins, validate without capabilities (``use_ray``: "Ray drivers typically have no GPU"),
    normalize, bind the cfg to the plugin manager; ``prepare_optim_env`` and the tracker setup
    only set the driver's environment and are left out. The result's ``to_dict()`` is what
    ``do_cli`` hands to the workers (axolotl/cli/train.py)."""
    from axolotl.cli.config import plugin_set_cfg
    from axolotl.utils.config import normalize_config

    cfg = DictDefault(copy.deepcopy(raw))
    prepare_plugins(cfg)
    cfg = validate_config(cfg, capabilities=None, env_capabilities=None)
    normalize_config(cfg)
    plugin_set_cfg(cfg)
    return cfg


@pytest.fixture
def offline_model_config(monkeypatch):
    """normalize_config reads the base model's config.json from the hub: DeepSeek-R1-Distill-Qwen
    is a `qwen2` model, so give it transformers' Qwen2Config, built offline."""
    from transformers import Qwen2Config

    monkeypatch.setattr("axolotl.utils.config.load_model_config", lambda cfg: Qwen2Config())
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as in `validate`
    monkeypatch.chdir(REPO)  # the driver runs from the repo root (the deepspeed path)
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def restore_torch_precision():
    """resolve_dtype (tf32 on an H100) sets torch's process-wide float32 matmul precision."""
    import torch

    backends = (torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = torch.get_float32_matmul_precision(), [b.fp32_precision for b in backends]
    yield
    torch.set_float32_matmul_precision(saved[0])
    for backend, value in zip(backends, saved[1]):
        backend.fp32_precision = value


def test_ray_config_validates_on_the_driver_with_the_plugin(offline_model_config):
    raw = load_yaml(RAY)
    assert raw["plugins"] == [PLUGIN]
    assert [ds["type"] for ds in raw["datasets"]] == [DATASET_TYPE]

    cfg = ray_driver_cfg(raw)

    assert PLUGIN in PluginManager.get_instance().plugins
    assert cfg.genprm_train_on_code_output is False and cfg.genprm_dataset_stats is True
    assert [ds["type"] for ds in cfg.datasets] == [DATASET_TYPE]
    assert cfg.use_ray is True and cfg.ray_num_workers == RAY_WORKERS
    assert cfg.resources_per_worker == {"GPU": 1}  # one GPU per worker: workers = GPUs
    assert cfg.ray_run_name == Path(RAY).stem
    # Read on the driver; the workers get its contents (the path is relative to the repo root).
    ds_file = REPO / raw["deepspeed"]
    assert cfg.deepspeed == json.loads(ds_file.read_text(encoding="utf-8"))
    # Ray's storage_path is output_dir: both must be on storage every node sees, not cwd-relative.
    assert Path(cfg.output_dir).is_absolute() and Path(cfg.dataset_prepared_path).is_absolute()
    assert Path(cfg.output_dir).name == Path(RAY).stem
    assert cfg.wandb_project == "genprm" and cfg.wandb_name == Path(RAY).stem


def test_ray_config_is_the_7b_recipe_with_the_same_global_batch():
    ray, recipe = load_yaml(RAY), load_yaml(RAY_RECIPE)
    assert set(ray) - set(recipe) == RAY_ONLY_KEYS
    assert set(recipe) <= set(ray)
    different = {key for key in recipe if ray[key] != recipe[key]}
    assert different == RAY_DIFFERENT_KEYS, "the Ray config must train exactly like genprm-7b.yml"
    assert ray["use_ray"] is True and ray["ddp"] is True

    assert ray["ray_num_workers"] == stated_gpu_count(RAY) == RAY_WORKERS
    assert ray["resources_per_worker"] == {"GPU": 1}
    recipe_batch = global_batch(recipe, stated_gpu_count(RAY_RECIPE))
    assert global_batch(ray, ray["ray_num_workers"]) == recipe_batch == PAPER_GLOBAL_BATCH


@pytest.mark.parametrize("ddp", [True, None])
def test_ray_worker_keeps_the_plugin_settings_and_the_global_batch(
    ddp, offline_model_config, restore_torch_precision, monkeypatch
):
    """Run axolotl's own Ray worker entry point, ``axolotl.cli.train.ray_train_func``, on what
    the driver sends. It registers the plugins from cfg["plugins"] before ``validate_config``
    (else the genprm keys would be dropped), then normalizes. Ray is not installed here and
    ray_train_func does not import it (only ``do_cli`` does, to build the TorchTrainer), so the
    function is called directly, as Ray Train would on worker 11 of 16; what needs a GPU, NCCL or
    the dataset is replaced: the GPU probe (an H100), ``prepare_optim_env`` (DeepSpeed/NCCL
    environment), ``Accelerator`` and ``do_train`` (which would load the data and train)."""
    import pickle

    import torch
    from axolotl.cli import train as axolotl_train
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.utils.config import normalize_config

    raw = load_yaml(RAY)
    if ddp is None:
        del raw["ddp"]
    driver_cfg = ray_driver_cfg(raw)
    # Ray pickles train_loop_config to the workers, each a fresh process with no plugins.
    sent = pickle.loads(pickle.dumps({"cfg": driver_cfg.to_dict(), "cli_args": TrainerCliArgs()}))
    manager = PluginManager.get_instance()
    manager.plugins.clear()
    manager.cfg = None

    # The environment Ray Train's torch backend sets on each worker.
    for var, value in {"WORLD_SIZE": RAY_WORKERS, "LOCAL_RANK": 3, "RANK": 11}.items():
        monkeypatch.setenv(var, str(value))
    worker_gpu = {**H100_CAPABILITIES, "n_gpu": RAY_WORKERS}
    monkeypatch.setattr(
        axolotl_train, "gpu_capabilities", lambda: (worker_gpu, env_capabilities()), raising=False
    )
    calls = collections.defaultdict(list)
    monkeypatch.setattr(
        axolotl_train, "prepare_optim_env", calls["optim_env"].append, raising=False
    )
    monkeypatch.setattr(
        axolotl_train, "Accelerator", lambda **kw: calls["accelerator"].append(kw), raising=False
    )
    monkeypatch.setattr(axolotl_train, "do_train", lambda **kw: calls["do_train"].append(kw))

    axolotl_train.ray_train_func(sent)

    [trained] = calls["do_train"]
    cfg = trained["cfg"]
    assert isinstance(trained["cli_args"], TrainerCliArgs)
    for key in GENPRM_KEYS:
        assert cfg[key] == driver_cfg[key], key
    assert cfg.genprm_train_on_code_output is raw["genprm_train_on_code_output"] is False
    assert cfg.genprm_dataset_stats is True
    assert list(manager.plugins) == [PLUGIN] and manager.cfg is cfg
    assert [ds["type"] for ds in cfg.datasets] == [DATASET_TYPE]
    assert cfg.world_size == RAY_WORKERS and cfg.local_rank == 3
    assert (cfg.micro_batch_size, cfg.gradient_accumulation_steps) == (2, 2)
    assert calls["accelerator"] == [{"gradient_accumulation_steps": 2}]
    assert calls["optim_env"] == [cfg]
    assert cfg.deepspeed["zero_optimization"]["stage"] == 3
    assert cfg.bf16 is True and cfg.torch_dtype == torch.bfloat16

    # axolotl's batch_size (steps per epoch, max_steps, warmup, the cosine schedule) is the global
    # batch only with `ddp: true`: the driver (WORLD_SIZE 1) decides ddp=false and the workers
    # keep it. Should this start passing without the key, axolotl fixed it: drop `ddp: true`.
    if ddp is None:
        assert cfg.ddp is False and cfg.batch_size == 4
        return
    assert cfg.ddp is True and cfg.batch_size == PAPER_GLOBAL_BATCH

    # genprm-7b.yml on one 8-GPU node (torchrun/accelerate) comes to the same batch_size.
    monkeypatch.setenv("WORLD_SIZE", str(stated_gpu_count(RAY_RECIPE)))
    prepare_plugins(DictDefault(load_yaml(RAY_RECIPE)))
    recipe = validate_config(
        DictDefault(load_yaml(RAY_RECIPE)),
        capabilities=H100_CAPABILITIES,
        env_capabilities=env_capabilities(),
    )
    normalize_config(recipe)
    assert recipe.ddp is True and recipe.batch_size == cfg.batch_size


# The launch commands of genprm_train/README.md ("Multi-node training"), as axolotl's CLI runs them.
@pytest.mark.parametrize(
    ("args", "launcher"),
    [
        (["--use-ray"], None),  # None: do_cli in this process, which starts the Ray TorchTrainer
        ([], "accelerate"),  # `use_ray: true` alone: one Ray driver per local GPU
    ],
)
def test_the_ray_config_is_launched_with_use_ray(args, launcher, monkeypatch):
    """axolotl's CLI picks the launcher from the command line, not the YAML
    (axolotl/cli/main.py: ``None if kwargs.get("use_ray") else launcher``)."""
    from axolotl.cli import main as axolotl_main
    from click.testing import CliRunner

    launched = []
    monkeypatch.setattr(
        axolotl_main, "launch_training", lambda cfg_file, launcher, *_: launched.append(launcher)
    )
    result = CliRunner().invoke(axolotl_main.train, [str(CONFIG_DIR / RAY), *args])
    assert result.exit_code == 0, result.output
    assert launched == [launcher]


@pytest.mark.parametrize(
    ("launcher_args", "launch_cmd"),
    [
        (
            ["--launcher", "torchrun", "--", "--nnodes", "2", "--nproc_per_node", "8"]
            + ["--rdzv_id", "genprm-7b", "--rdzv_backend", "c10d"]
            + ["--rdzv_endpoint", "NODE1_IP:29400"],
            ["torchrun", "--nnodes", "2", "--nproc_per_node", "8"],
        ),
        (
            ["--", "--multi_gpu", "--num_machines", "2", "--num_processes", "16"]
            + ["--machine_rank", "1", "--main_process_ip", "NODE1_IP"]
            + ["--main_process_port", "29500"],
            ["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "16"],
        ),
    ],
)
def test_multi_node_commands_keep_the_global_batch(launcher_args, launch_cmd, monkeypatch):
    """2 nodes x 8 GPUs with genprm-7b.yml: the command halves gradient_accumulation_steps
    (4 -> 2) so the global batch stays 64; axolotl passes it on to each training process."""
    import os

    from axolotl.cli import main as axolotl_main
    from click.testing import CliRunner

    commands = []
    monkeypatch.setattr(os, "execvpe", lambda file, cmd, env: commands.append(cmd))
    config = str(CONFIG_DIR / RAY_RECIPE)
    cli_args = [config, "--gradient-accumulation-steps", "2", *launcher_args]
    result = CliRunner().invoke(axolotl_main.train, cli_args)
    assert result.exit_code == 0, result.output

    [cmd] = commands
    assert cmd[: len(launch_cmd)] == launch_cmd
    assert cmd[cmd.index("-m") :][:3] == ["-m", "axolotl.cli.train", config]
    assert "--gradient-accumulation-steps=2" in cmd
    recipe = load_yaml(RAY_RECIPE)
    assert global_batch({**recipe, "gradient_accumulation_steps": 2}, 16) == PAPER_GLOBAL_BATCH


@pytest.mark.parametrize(
    ("name", "key", "nearest"),
    [
        (CPU, "genprm_train_on_code_ouput", "genprm_train_on_code_output"),
        (CPU, "genprm_dataset_stat", "genprm_dataset_stats"),
        (GRPO_CPU, "genprm_rewards", "genprm_reward"),
    ],
)
def test_a_misspelt_genprm_key_stops_validation_naming_the_nearest(name, key, nearest, validate):
    """Axolotl ignores keys it does not know; a ``genprm_*`` one is ours, so a typo is an error
    instead of a silent default."""
    raw = load_yaml(name)
    raw[key] = True
    with pytest.raises(ValueError) as excinfo:
        validate(raw, name)
    assert f"unknown key {key}" in str(excinfo.value)
    assert f"did you mean {nearest}?" in str(excinfo.value)


def test_a_misspelt_genprm_reward_key_names_the_nearest(validate):
    raw = load_yaml(GRPO_CPU)
    raw["genprm_reward"] = {**raw["genprm_reward"], "timeout": 60}
    with pytest.raises(ValueError) as excinfo:
        validate(raw, GRPO_CPU)
    assert "unknown key genprm_reward.timeout; did you mean genprm_reward.timeout_s?" in str(
        excinfo.value
    )


def test_genprm_args_refuse_unknown_genprm_keys_and_keep_the_others():
    from genprm_train.args import GenPRMArgs

    assert GenPRMArgs(base_model="x", genprm_dataset_stats=False).genprm_dataset_stats is False
    with pytest.raises(
        ValueError,
        match="unknown key genprm_train_on_code_ouput; did you mean genprm_train_on_code_output",
    ):
        GenPRMArgs(genprm_train_on_code_ouput=True)
    with pytest.raises(
        ValueError,
        match="unknown key genprm_1; keys: genprm_dataset_stats, "
        "genprm_reward, genprm_train_on_code_output",
    ):
        GenPRMArgs(genprm_1=1)
