"""The GenPRM plugin's top-level config keys.

They sit at the top level of the axolotl YAML, not under ``datasets:``: axolotl silently drops
per-dataset keys it does not know.
"""

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from genprm.aggregate import AGGREGATIONS
from genprm.verifier import AMBIGUITY, BUDGET, DEFAULT_HISTORY, HISTORIES, MODES, PROMPT_STYLES


def _check_keys(given, known: list[str], prefix: str = "") -> None:
    """A ValueError naming the first of ``given`` not in ``known`` and the nearest known one."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    nearest = difflib.get_close_matches(unknown[0], known, n=1)
    if nearest:
        hint = f"did you mean {prefix}{nearest[0]}?"
    else:
        hint = "keys: " + ", ".join(prefix + name for name in known)
    raise ValueError(f"unknown key {prefix}{unknown[0]}; {hint}")


class GenPRMRewardArgs(BaseModel):
    """The ``genprm_reward:`` block: how ``genprm_train.reward.genprm_reward`` (a TRL reward
    function for ``rl: grpo``) reaches its GenPRM verifier and turns step rewards into one
    reward per completion. Unknown keys are an error (a typo would otherwise be ignored)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _check_keys(data, sorted(GenPRMRewardArgs.model_fields), "genprm_reward.")
        return data

    base_urls: list[str] = Field(
        min_length=1,
        json_schema_extra={
            "description": "OpenAI-compatible servers (vLLM) serving the GenPRM checkpoint, "
            "e.g. http://node1:8000/v1; requests are spread over all of them."
        },
    )
    model: str | None = Field(
        default=None, json_schema_extra={"description": "Served model name (default: the first)."}
    )
    tokenizer: str | None = Field(
        default=None,
        json_schema_extra={"description": "Local tokenizer path (default: the served path)."},
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        json_schema_extra={"description": "Environment variable holding the servers' API key."},
    )
    mode: Literal[MODES] = Field(
        default="cot+code",
        json_schema_extra={
            "description": "Verifier mode (spec §3): cot+code, cot, direct, or adaptive "
            "(direct, then cot, then cot+code while a step's reward is ambiguous)."
        },
    )
    ambiguity: float = Field(
        default=AMBIGUITY,
        ge=0,
        le=0.5,
        json_schema_extra={
            "description": "Adaptive mode: a step's reward closer than this to 0 or 1 decides it."
        },
    )
    maj: int = Field(default=1, ge=1, json_schema_extra={"description": "Maj@N samples per step."})
    history: Literal[HISTORIES] = Field(
        default=DEFAULT_HISTORY,
        json_schema_extra={
            "description": "Maj@N paths: independent (each its own history, the paper's Maj@N) "
            "or shared (all continue path 0's; one request of n=maj per step, cheaper with "
            "prefix caching: upstream's later dev branch)."
        },
    )
    budget: int = Field(
        default=BUDGET, ge=1, json_schema_extra={"description": "Verifier tokens per step turn."}
    )
    prompt_style: Literal[PROMPT_STYLES] = Field(
        default="train",
        json_schema_extra={"description": "train (our checkpoints) or upstream (released ones)."},
    )
    aggregation: Literal[AGGREGATIONS] = Field(
        default="min",
        json_schema_extra={"description": "Step rewards -> one reward: last, min, mean, product."},
    )
    problem_column: str = Field(
        default="problem",
        json_schema_extra={
            "description": "Dataset column with the problem text the verifier sees (without "
            "it: the prompt's last user message)."
        },
    )
    answer_column: str | None = Field(
        default=None,
        json_schema_extra={
            "description": "Dataset column with the reference answer; set, it adds "
            "outcome_weight when math-verify finds the completion's last \\boxed{} equal to it."
        },
    )
    outcome_weight: float = Field(
        default=1.0, json_schema_extra={"description": "Weight of the outcome term."}
    )
    unscorable_reward: float = Field(
        default=0.0,
        json_schema_extra={
            "description": "Process reward of a completion with no step to score (empty) or "
            "whose steps do not fit the verifier's context."
        },
    )
    retries: int = Field(
        default=5,
        ge=0,
        json_schema_extra={
            "description": "Retries of a failed or timed-out request (and of the start-up "
            "health check) before training stops with an error."
        },
    )
    backoff_s: float = Field(
        default=0.5, gt=0, json_schema_extra={"description": "First retry delay (doubles)."}
    )
    timeout_s: float = Field(
        default=600.0, gt=0, json_schema_extra={"description": "Seconds one request may take."}
    )
    max_concurrency: int = Field(
        default=64, ge=1, json_schema_extra={"description": "Requests in flight per server."}
    )
    sandbox_workers: int = Field(
        default=4,
        ge=1,
        json_schema_extra={
            "description": "Sandbox workers (cot+code and adaptive code, math-verify)."
        },
    )


class GenPRMArgs(BaseModel):
    """Config keys added by ``plugins: [genprm_train.GenPRMPlugin]``."""

    # The axolotl config holds every other key too; only the genprm_ ones are ours to check.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _known_genprm_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # Compared without the shared prefix, which would make every name look close.
            ours = [k[7:] for k in data if isinstance(k, str) and k.startswith("genprm_")]
            _check_keys(ours, [name[7:] for name in sorted(GenPRMArgs.model_fields)], "genprm_")
        return data

    genprm_train_on_code_output: StrictBool = Field(
        default=False,
        json_schema_extra={
            "description": "Train on the [Code Output] blocks inside assistant turns. They are "
            "written by the code executor, not the model, so they are masked by default; upstream "
            "GenPRM trained on them (true reproduces axolotl's chat_template labels exactly)."
        },
    )
    genprm_dataset_stats: StrictBool = Field(
        default=True,
        json_schema_extra={
            "description": "At train start, log dataset facts to the run: steps per sample, "
            "share of Yes/No judgements, share of masked tokens."
        },
    )
    genprm_reward: GenPRMRewardArgs | None = Field(
        default=None,
        json_schema_extra={
            "description": "The GenPRM verifier behind the GRPO reward function "
            "genprm_train.reward.genprm_reward (trl.reward_funcs)."
        },
    )
