"""axolotl dataset type ``genprm_train.prompt_strategy``: GenPRM conversations to training rows.

Each conversation is rendered with the chat template once and tokenized once (a whole batch in
one call to the fast tokenizer); which tokens carry loss is read off the tokenizer's character
offsets. Loss goes on assistant turns and the end-of-turn token after each, never on system or
user turns, and by default not on the ``[Code Output]`` blocks the executor wrote. With
``genprm_train_on_code_output: true`` the labels equal axolotl's ``chat_template`` strategy
(``roles_to_train: [assistant]``, ``train_on_eos: turn``) token for token.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from genprm.format import code_output_spans
from genprm.records import RecordError, describe, record_messages

IGNORE_INDEX = -100
# How many tokens a template may put between a turn's text and its end-of-turn token; the
# same allowance axolotl's chat_template strategy makes.
EOT_WINDOW = 3


def assistant_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character span of each assistant turn's content inside the rendered ``text``.

    Messages appear in the render in order, so each is searched for after the previous one.
    A template that trims turns is handled; one that rewrites an assistant turn raises.

    >>> msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4\\n"}]
    >>> assistant_spans("<u>2+2?</u><a>4\\n</a>", msgs)
    [(14, 16)]
    >>> assistant_spans("<u>2+2?</u><a>4</a>", msgs)
    [(14, 15)]
    """
    spans, cursor = [], 0
    for index, message in enumerate(messages):
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0 and content.strip():
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            if message["role"] == "assistant":
                raise ValueError(
                    f"message {index} (assistant) does not appear verbatim in the rendered chat "
                    "template, so its tokens cannot be located"
                )
            continue  # a template may drop or move a system prompt
        cursor = start + len(content)
        if message["role"] == "assistant":
            spans.append((start, cursor))
    return spans


def loss_pieces(
    text: str, span: tuple[int, int], train_on_code_output: bool
) -> list[tuple[int, int]]:
    """The parts of an assistant span that carry loss: all of it, or all but [Code Output] blocks.

    >>> turn = "x\\n[Code Output]\\n\\n```\\n4\\n```\\ny"
    >>> loss_pieces(turn, (0, len(turn)), train_on_code_output=False)
    [(0, 2), (27, 28)]
    """
    if train_on_code_output:
        return [span]
    pieces, cursor = [], span[0]
    for block_start, block_end in code_output_spans(text, span[0], span[1]):
        pieces.append((cursor, block_start))
        cursor = block_end
    pieces.append((cursor, span[1]))
    return [(start, end) for start, end in pieces if end > start]


class GenPRMPromptStrategy:
    """Tokenizes batches of GenPRM records into ``input_ids``, ``attention_mask``, ``labels``."""

    supports_batched = True

    def __init__(
        self,
        tokenizer,
        chat_template: str,
        train_on_code_output: bool = False,
        eot_tokens: list[str] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("genprm_train.prompt_strategy needs a fast tokenizer (char offsets)")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.train_on_code_output = train_on_code_output
        self.chat_template_kwargs = chat_template_kwargs or {}
        encoded = [
            tokenizer.encode(t, add_special_tokens=False)
            for t in eot_tokens or [tokenizer.eos_token]
        ]
        self.eot_ids = {ids[0] for ids in encoded if len(ids) == 1}

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=False,
            chat_template=self.chat_template,
            **self.chat_template_kwargs,
        )

    def tokenize_prompt(self, batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        """axolotl's batched entry point: columns of records in, columns of token rows out."""
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        conversations = [record_messages(row) for row in rows]
        texts = [self.render(messages) for messages in conversations]
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for row, messages, text, input_ids, offsets in zip(
            rows, conversations, texts, encoded["input_ids"], encoded["offset_mapping"]
        ):
            try:
                labels = self._labels(text, messages, input_ids, offsets)
            except ValueError as error:
                raise RecordError(f"{describe(row)}: {error}") from None
            out["input_ids"].append(input_ids)
            out["attention_mask"].append([1] * len(input_ids))
            out["labels"].append(labels)
        return out

    def tokenize_row(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """One record in, one training row out."""
        batch = self.tokenize_prompt({key: [value] for key, value in row.items()})
        return {key: values[0] for key, values in batch.items()}

    def _labels(self, text, messages, input_ids, offsets) -> list[int]:
        starts = [start for start, _ in offsets]
        ends = [end for _, end in offsets]
        labels = [IGNORE_INDEX] * len(input_ids)
        for span in assistant_spans(text, messages):
            for char_start, char_end in loss_pieces(text, span, self.train_on_code_output):
                # Every token that overlaps the piece, as axolotl's chat_template counts them.
                first, last = bisect_right(ends, char_start), bisect_left(starts, char_end)
                labels[first:last] = input_ids[first:last]
            after = bisect_left(starts, span[1])
            for index in range(after, min(after + EOT_WINDOW + 1, len(input_ids))):
                if input_ids[index] in self.eot_ids:
                    labels[index] = input_ids[index]
                    break
        return labels


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> GenPRMPromptStrategy:
    """axolotl's hook for ``type: genprm_train.prompt_strategy``."""
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from pydantic import BaseModel

    if cfg.get("train_on_inputs"):
        raise ValueError(
            "genprm_train.prompt_strategy trains on assistant turns only; "
            "remove `train_on_inputs: true`"
        )
    if isinstance(ds_cfg, BaseModel):
        ds_cfg = ds_cfg.model_dump()
    return GenPRMPromptStrategy(
        tokenizer,
        chat_template=get_chat_template_from_config(cfg=cfg, ds_cfg=ds_cfg, tokenizer=tokenizer),
        train_on_code_output=bool(cfg.get("genprm_train_on_code_output")),
        eot_tokens=cfg.get("eot_tokens"),
        chat_template_kwargs=cfg.get("chat_template_kwargs"),
    )
