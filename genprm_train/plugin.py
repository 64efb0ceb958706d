"""``GenPRMPlugin``, registered in an axolotl YAML as ``genprm_train.GenPRMPlugin``."""

import logging

from axolotl.integrations.base import BasePlugin

LOG = logging.getLogger(__name__)


class GenPRMPlugin(BasePlugin):
    """Declares the ``genprm_*`` config keys, logs dataset facts to the run at train start and
    the conversations of every optimizer step (``genprm/conversations_per_step``), connects the
    GRPO reward function ``genprm_train.reward.genprm_reward`` to its verifier
    (``genprm_reward:``), and finishes the W&B run when training is done."""

    def get_input_args(self):
        return "genprm_train.args.GenPRMArgs"

    def post_trainer_create(self, cfg, trainer):
        from . import reward

        uses_reward = reward.genprm_reward in getattr(trainer, "reward_funcs", [])
        if uses_reward and not cfg.genprm_reward:
            raise ValueError(
                "trl.reward_funcs names genprm_train.reward.genprm_reward but the config has no "
                "`genprm_reward:` block with the verifier's `base_urls`"
            )
        if cfg.genprm_reward and not uses_reward:
            LOG.warning("genprm_reward is set but trl.reward_funcs does not use it: ignored")
        if uses_reward:  # connected now: a missing server fails before the first step
            reward.configure(dict(cfg.genprm_reward))

    def add_callbacks_post_trainer(self, cfg, trainer):
        if cfg.rl:  # RL rows are prompts, not tokenized GenPRM conversations
            return []
        from .conversation_count import ConversationsPerStepCallback

        callbacks = [
            ConversationsPerStepCallback(
                trainer.model, trainer.store_metrics, bool(cfg.sample_packing), cfg.sequence_len
            )
        ]
        if cfg.genprm_dataset_stats:
            from .dataset_facts import DatasetFactsCallback

            callbacks.append(DatasetFactsCallback(trainer.train_dataset, trainer.processing_class))
        return callbacks

    def post_train_unload(self, cfg):
        from .reward import close

        close()
        # Without this the run is finished by wandb's service only after it notices the
        # training process is gone (over a minute later, seen with offline runs): the last
        # logged step is missing until then, and lost if the node is released first.
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
