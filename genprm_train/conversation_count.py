"""Conversations per optimizer step, counted from the batches the model is trained on and logged
to the run as ``genprm/conversations_per_step``.

The paper's batch is 64 conversations. Without sample packing a row is one conversation, so
micro batch x accumulation x GPUs is that count; with packing a row holds as many conversations
as fit in ``sequence_len`` and the count varies from step to step (about 3x on
GenPRM-MATH-Data), which only the batches themselves tell.

Where a packed conversation starts: ``position_ids`` restart at 0. axolotl's packing collators
keep each conversation's own position ids, and the varlen attention (flash attention, SDPA)
finds the boundaries the same way; the attention mask cannot be used, because axolotl drops it
from packed batches for those backends. Padding restarts at 0 too but has no trained label, so a
conversation is a segment with at least one trained label (without packing: a row with one).

The count is taken in a forward pre-hook on the model, in the training process, for each micro
batch as it is trained on. A wrapped data collator would see the same batches, but may run in
DataLoader worker processes and ahead of the step it belongs to (prefetching), so its counts
would not reach the step that trains them.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import reduce
from transformers import TrainerCallback

from .prompt_strategy import IGNORE_INDEX

# axolotl shows INFO records only from loggers named axolotl.*
LOG = logging.getLogger("axolotl.integrations.genprm")
METRIC = "genprm/conversations_per_step"


def conversations_in_batch(
    labels: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Conversations with a trained label in a collated ``(rows, tokens)`` batch, as a 0-d
    tensor on the batch's device (no host sync per micro batch).

    >>> x = IGNORE_INDEX
    >>> labels = torch.tensor([[x, 5, 6, x, 7, x, x], [x, 8, x, x, x, x, x]])
    >>> conversations_in_batch(labels).item()  # unpacked: the rows with a trained label
    2
    >>> packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4]])
    >>> conversations_in_batch(labels, packed).item()  # the padding segments train nothing
    3
    """
    trained = labels != IGNORE_INDEX
    if position_ids is None:
        return trained.any(dim=-1).sum()
    segment = (position_ids == 0).cumsum(dim=-1).expand_as(labels)
    rows, tokens = labels.shape
    trained_per_segment = torch.zeros(rows, tokens + 1, dtype=torch.long, device=labels.device)
    trained_per_segment.scatter_add_(1, segment, trained.long())
    return (trained_per_segment > 0).sum()


class ConversationsPerStepCallback(TrainerCallback):
    """Counts the conversations that ``model`` trains on in each optimizer step, summed over all
    processes, hands the count to ``store_metrics`` (an axolotl trainer's, which logs it with
    the loss: ``trainer_state.json``'s log_history and W&B's
    ``train/genprm/conversations_per_step``) and logs it once after the first step.

    ``sample_packing`` and ``sequence_len`` only describe the batch in that message.
    """

    def __init__(self, model, store_metrics, sample_packing: bool, sequence_len: int):
        self.store_metrics = store_metrics
        self.sample_packing = sample_packing
        self.sequence_len = sequence_len
        self._counted: torch.Tensor | None = None
        self._unlabelled = False
        self._announced = False
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        if not module.training:  # evaluation
            return
        labels = kwargs.get("labels")
        if labels is None:  # the trainer computes the loss itself (label smoothing, EAFT, KD)
            self._unlabelled = True
            return
        count = conversations_in_batch(labels, kwargs.get("position_ids"))
        self._counted = count if self._counted is None else self._counted + count

    def on_step_end(self, args, state, control, **kwargs):
        counted, self._counted = self._counted, None
        if self._unlabelled:
            if not self._announced and state.is_world_process_zero:
                LOG.warning(
                    "genprm: %s not logged: the model's forward gets no labels, so the "
                    "conversations that carry loss cannot be told from padding",
                    METRIC,
                )
            self._announced = True
            return
        if counted is None:  # no micro batch on this process: it still joins the reduction
            counted = torch.zeros((), dtype=torch.long, device=args.device)
        total = int(reduce(counted, reduction="sum").item())
        # A float: the trainer averages the steps between two logs (logging_steps > 1).
        self.store_metrics({METRIC: float(total)})
        if not self._announced and state.is_world_process_zero:
            LOG.info("genprm: %s", self.describe(total, args))
        self._announced = True

    def describe(self, total: int, args) -> str:
        """The first step's message: the count and the batch shape it came from."""
        devices = ("GPU", "GPUs") if args.device.type == "cuda" else ("process", "processes")
        shape = (
            f"micro batch {args.per_device_train_batch_size} x accumulation "
            f"{args.gradient_accumulation_steps} x {args.world_size} "
            f"{devices[args.world_size != 1]}"
        )
        if not self.sample_packing:
            return f"{total} conversations per optimizer step ({shape})"
        rows = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return (
            f"{total} conversations in the first optimizer step (sample packing: {shape} = "
            f"{rows * args.world_size} rows of up to {self.sequence_len} tokens; the count "
            f"varies from step to step and is logged as {METRIC})"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._hook.remove()
