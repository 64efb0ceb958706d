"""axolotl dataset type ``genprm_train.prompt_strategy``: GenPRM conversations to training rows.

Each conversation is rendered with the chat template once and tokenized once (a whole batch in
one call to the fast tokenizer); which tokens carry loss is read off the tokenizer's character
offsets. Loss goes on assistant turns and the end-of-turn token after each, never on system or
user turns, and by default not on the ``[Code Output]`` blocks the executor wrote. With
``genprm_train_on_code_output: true`` the labels equal axolotl's ``chat_template`` strategy
(``roles_to_train: [assistant]``, ``train_on_eos: turn``) token for token.

End of turn, as in axolotl: the first ``eot_tokens`` token (default: the EOS token) and the
first EOS token within ``EOT_WINDOW`` tokens after an assistant turn are trained, and an
``eot_tokens`` entry that is not a single token is refused. Where axolotl only warns, a template
that writes no end-of-turn token after an assistant turn (checked on a probe conversation) is
refused when the strategy is built: the model would never learn to stop.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from genprm.format import build_direct_conversation, code_output_spans
from genprm.records import RecordError, describe, record_messages

IGNORE_INDEX = -100
# How many tokens a template may put between a turn's text and its end-of-turn token; the
# same allowance axolotl's chat_template strategy makes.
EOT_WINDOW = 3
# A conversation in the GenPRM shape (system, then user and assistant turns) to check the
# chat template on before any record is tokenized.
_PROBE = build_direct_conversation("What is 1 + 1?", ["1 + 1 = 2.", "So the answer is 2."], -1)


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
                    f"template, so its tokens cannot be located{_rewrite_hint(content)}"
                )
            continue  # a template may drop or move a system prompt
        cursor = start + len(content)
        if message["role"] == "assistant":
            spans.append((start, cursor))
    return spans


def _rewrite_hint(content: str) -> str:
    if "</think>" in content:
        return (
            " (it contains `</think>`: DeepSeek-R1-style templates keep only the text after it; "
            "remove the reasoning from the turn)"
        )
    return ""


def loss_pieces(
    text: str, span: tuple[int, int], train_on_code_output: bool
) -> list[tuple[int, int]]:
    """The parts of an assistant span that carry loss: all of it, or all but [Code Output] blocks.

    >>> turn = "x\\n```python\\nprint(4)\\n```\\n[Code Output]\\n\\n```\\n4\\n```\\ny"
    >>> loss_pieces(turn, (0, len(turn)), train_on_code_output=False)
    [(0, 25), (50, 51)]
    """
    if train_on_code_output:
        return [span]
    pieces, cursor = [], span[0]
    for block_start, block_end in code_output_spans(text, span[0], span[1]):
        pieces.append((cursor, block_start))
        cursor = block_end
    pieces.append((cursor, span[1]))
    return [(start, end) for start, end in pieces if end > start]


def first_in_window(input_ids: list[int], after: int, wanted: set[int]) -> int | None:
    """Index of the first ``wanted`` token within ``EOT_WINDOW`` tokens from ``after``, or None.

    >>> first_in_window([5, 6, 7, 8, 9, 2], 1, {2, 9})
    4
    >>> first_in_window([5, 6, 7, 8, 9, 2], 0, {2}) is None
    True
    """
    for index in range(after, min(after + EOT_WINDOW + 1, len(input_ids))):
        if input_ids[index] in wanted:
            return index
    return None


class GenPRMPromptStrategy:
    """Tokenizes batches of GenPRM records into ``input_ids``, ``attention_mask``, ``labels``.

    ``template_name`` (the YAML's ``chat_template`` choice) only names the template in errors.
    """

    supports_batched = True

    def __init__(
        self,
        tokenizer,
        chat_template: str,
        train_on_code_output: bool = False,
        eot_tokens: list[str] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        template_name: str | None = None,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("genprm_train.prompt_strategy needs a fast tokenizer (char offsets)")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.train_on_code_output = train_on_code_output
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.template = _template_label(template_name, chat_template, tokenizer)
        self.eot_tokens = eot_tokens or ([tokenizer.eos_token] if tokenizer.eos_token else [])
        self.eot_ids = {self._single_token_id(token) for token in self.eot_tokens}
        eos_id = tokenizer.eos_token_id
        self.eos_ids = {eos_id} if eos_id is not None else set()
        self._check_end_of_turn()

    def _single_token_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"{self.template}: eot_tokens entry {token!r} is {len(ids)} tokens for this "
                f"tokenizer ({pieces}), but an end-of-turn marker must be one token (axolotl's "
                "rule too). Set `eot_tokens:` to the single token the template ends an "
                "assistant turn with, or add this one to the vocabulary (axolotl's `tokens:` or "
                "`added_tokens_overrides:`)"
            )
        return ids[0]

    def _check_end_of_turn(self) -> None:
        """Render the probe conversation: every assistant turn must be followed by an
        end-of-turn token within the window, or no turn would ever be trained to end."""
        text = self.render(_PROBE)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, starts = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
        try:
            spans = assistant_spans(text, _PROBE)
        except ValueError as error:
            raise ValueError(f"{self.template}: {error}") from None
        for _, end in spans:
            after = bisect_left(starts, end)
            if first_in_window(input_ids, after, self.eot_ids) is None:
                window = input_ids[after : after + EOT_WINDOW + 1]
                raise ValueError(self._no_end_of_turn(text[end : end + 40], window))

    def _no_end_of_turn(self, following_text: str, following: list[int]) -> str:
        if self.eot_tokens:
            looked_for = f"no {' or '.join(map(repr, self.eot_tokens))}"
        else:
            looked_for = "nothing to look for: the tokenizer has no eos_token"
        added = self.tokenizer.added_tokens_decoder
        ender = next((str(added[i]) for i in following if i in added), None)
        advice = (
            f"if {ender!r} is how it ends an assistant turn, set `eot_tokens: [{ender!r}]`"
            if ender
            else "set `eot_tokens: [...]` to the token it ends an assistant turn with, or use "
            "a template that writes one"
        )
        return (
            f"{self.template} writes {following_text!r} after an assistant turn ({looked_for} "
            f"within {EOT_WINDOW} tokens), so the model would never learn to end a turn: {advice}"
        )

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
        """One record in, one training row out.

        >>> from genprm.testing.tokenizers import qwen25_tokenizer
        >>> tokenizer = qwen25_tokenizer()
        >>> strategy = GenPRMPromptStrategy(tokenizer, tokenizer.chat_template)
        >>> row = strategy.tokenize_row({"problem": "1 + 1?", "steps": ["2"], "label": -1})
        >>> sorted(row)
        ['attention_mask', 'input_ids', 'labels']
        >>> tokenizer.decode([token for token in row["labels"] if token != IGNORE_INDEX])
        '<output>\\n**Judgement**: $\\\\boxed{Yes}$\\n</output>\\n<|im_end|>'
        """
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
            for wanted in (self.eot_ids, self.eos_ids):
                index = first_in_window(input_ids, after, wanted)
                if index is not None:
                    labels[index] = input_ids[index]
        return labels


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> GenPRMPromptStrategy:
    """axolotl's hook for ``type: genprm_train.prompt_strategy``."""
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from axolotl.utils.chat_templates.base import extract_chat_template_args
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
        template_name=extract_chat_template_args(cfg=cfg, ds_cfg=ds_cfg)[0],
    )


def _template_label(name: str | None, chat_template: str, tokenizer) -> str:
    """How errors name the chat template."""
    if name in (None, "tokenizer_default") and chat_template == tokenizer.chat_template:
        return "the tokenizer's own chat template (`chat_template: tokenizer_default`)"
    if name is None:
        return "the chat template given to GenPRMPromptStrategy"
    return f"the chat template set by `chat_template: {name}`"
