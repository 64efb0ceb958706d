"""``GenPRMPlugin``, registered in an axolotl YAML as ``genprm_train.GenPRMPlugin``."""

from axolotl.integrations.base import BasePlugin


class GenPRMPlugin(BasePlugin):
    """Declares the ``genprm_*`` config keys, logs dataset facts to the run at train start, and
    finishes the W&B run when training is done."""

    def get_input_args(self):
        return "genprm_train.args.GenPRMArgs"

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not cfg.genprm_dataset_stats:
            return []
        from .dataset_facts import DatasetFactsCallback

        return [DatasetFactsCallback(trainer.train_dataset, trainer.processing_class)]

    def post_train_unload(self, cfg):
        # Without this the run is finished by wandb's service only after it notices the
        # training process is gone (over a minute later, seen with offline runs): the last
        # logged step is missing until then, and lost if the node is released first.
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
