"""The GenPRM plugin's top-level config keys.

They sit at the top level of the axolotl YAML, not under ``datasets:``: axolotl silently drops
per-dataset keys it does not know.
"""

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class GenPRMArgs(BaseModel):
    """Config keys added by ``plugins: [genprm_train.GenPRMPlugin]``."""

    model_config = ConfigDict(extra="ignore")

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
