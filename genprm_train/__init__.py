"""GenPRM for axolotl: the ``genprm_train.prompt_strategy`` dataset type and ``GenPRMPlugin``."""

from axolotl.integrations.base import BasePlugin

from .args import GenPRMArgs as GenPRMArgs


class GenPRMPlugin(BasePlugin):
    """Declares the ``genprm_*`` config keys and logs dataset facts to the run at train start."""

    def get_input_args(self):
        return "genprm_train.args.GenPRMArgs"

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not cfg.genprm_dataset_stats:
            return []
        from .dataset_facts import DatasetFactsCallback

        return [DatasetFactsCallback(trainer.train_dataset, trainer.processing_class)]
