"""Facts about a tokenized GenPRM training set, logged to the run when training starts."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from genprm.format import NO, OUTPUT_PREFIX, YES

from .prompt_strategy import IGNORE_INDEX

# axolotl shows INFO records only from loggers named axolotl.*
LOG = logging.getLogger("axolotl.integrations.genprm")
_YES_MARK = OUTPUT_PREFIX + "{" + YES + "}"
_NO_MARK = OUTPUT_PREFIX + "{" + NO + "}"


def dataset_facts(dataset, tokenizer, batch_size: int = 512) -> dict[str, float]:
    """Samples, steps (judged assistant turns) per sample, Yes/No shares, masked-token share.

    Judgements are counted in the decoded text of the tokens that carry loss, so they describe
    what the model is actually trained to write.
    """
    samples = tokens = trained = yes = no = 0
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=batch_size):
        kept = [[t for t in labels if t != IGNORE_INDEX] for labels in batch["labels"]]
        for text in tokenizer.batch_decode(kept):
            yes += text.count(_YES_MARK)
            no += text.count(_NO_MARK)
        samples += len(kept)
        tokens += sum(len(ids) for ids in batch["input_ids"])
        trained += sum(len(ids) for ids in kept)
    judged = yes + no
    return {
        "samples": samples,
        "tokens_per_sample": tokens / samples if samples else 0.0,
        "steps_per_sample": judged / samples if samples else 0.0,
        "yes_share": yes / judged if judged else 0.0,
        "no_share": no / judged if judged else 0.0,
        "masked_token_share": 1 - trained / tokens if tokens else 0.0,
    }


class DatasetFactsCallback(TrainerCallback):
    """Logs :func:`dataset_facts` of the train set once, on the main process, at train start."""

    def __init__(self, dataset, tokenizer):
        self.dataset = dataset
        self.tokenizer = tokenizer

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        facts = {
            f"genprm/{key}": value
            for key, value in dataset_facts(self.dataset, self.tokenizer).items()
        }
        LOG.info("GenPRM training set: %s", ", ".join(f"{k}={v:.4g}" for k, v in facts.items()))
        if "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update(facts)
                wandb.run.config.update(facts, allow_val_change=True)
