"""Command-line plumbing shared by genprm's commands: the generation-engine flags, and the
flags of a second (policy) engine for the commands that generate solutions and score them."""

from __future__ import annotations

import argparse

from .backends import Engine, make_engine


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation-engine flags every command that generates takes."""
    group = parser.add_argument_group("generation engine")
    group.add_argument("--engine", choices=("vllm", "openai"), default="vllm")
    group.add_argument(
        "--model",
        help="vllm: checkpoint path or hub id (default: the embedded SmolLM2-135M-Instruct); "
        "openai: served model name (default: the first one served)",
    )
    group.add_argument("--tp", type=int, default=1, help="vllm: tensor-parallel size")
    group.add_argument("--dp", type=int, default=1, help="vllm: data-parallel size")
    group.add_argument("--dtype", default="auto", help="vllm: weights dtype")
    group.add_argument("--max-model-len", type=int, help="vllm: context length")
    group.add_argument("--gpu-memory-utilization", type=float, help="vllm: GPU memory share")
    group.add_argument(
        "--enforce-eager", action="store_true", help="vllm: skip compilation (faster start)"
    )
    group.add_argument(
        "--base-url",
        action="append",
        dest="base_urls",
        metavar="URL",
        help="openai: server URL, e.g. http://node1:8000/v1; repeat for more servers",
    )
    group.add_argument("--tokenizer", help="openai: local tokenizer (default: the served path)")
    group.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="openai: environment variable holding the API key",
    )
    group.add_argument(
        "--max-concurrency",
        type=int,
        default=64,
        help="openai: requests in flight per server (in all: this times the servers)",
    )


# Flags (by dest) that only one engine reads.
_ENGINE_FLAGS = {
    "vllm": {
        "tp": "--tp",
        "dp": "--dp",
        "dtype": "--dtype",
        "max_model_len": "--max-model-len",
        "gpu_memory_utilization": "--gpu-memory-utilization",
        "enforce_eager": "--enforce-eager",
    },
    "openai": {
        "base_urls": "--base-url",
        "tokenizer": "--tokenizer",
        "api_key_env": "--api-key-env",
        "max_concurrency": "--max-concurrency",
    },
}


def engine_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Engine:
    """The engine the flags of :func:`add_engine_arguments` describe; flags that do not fit
    the chosen engine are reported through ``parser.error`` (usage and exit status 2)."""
    return make_engine(**engine_options(parser, args))


def engine_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The :func:`~genprm.backends.make_engine` options of :func:`engine_from_args` (checked
    the same way): what a process elsewhere (a Ray actor) needs to build the same engine."""
    for engine, flags in _ENGINE_FLAGS.items():
        for dest, flag in flags.items():
            if engine != args.engine and getattr(args, dest) != parser.get_default(dest):
                parser.error(f"{flag} is for --engine {engine}")
    if args.engine == "vllm":
        return _vllm_options(args, args.model)
    if not args.base_urls:
        parser.error("--engine openai needs at least one --base-url")
    return _openai_options(args, args.base_urls, args.model, args.tokenizer)


def add_policy_engine_arguments(
    parser: argparse.ArgumentParser,
    description: str = "the model that writes the solutions (default: the verifier's engine)",
) -> argparse._ArgumentGroup:
    """The policy-engine flags (``--policy-base-url``, ``--policy-model``,
    ``--policy-tokenizer``) in a "policy" group, returned for the command's own policy flags.
    The engine flags of :func:`add_engine_arguments` must be declared too."""
    group = parser.add_argument_group("policy", description)
    group.add_argument(
        "--policy-base-url",
        action="append",
        dest="policy_base_urls",
        metavar="URL",
        help="an OpenAI-compatible server of the policy; repeat for more",
    )
    group.add_argument(
        "--policy-model",
        help="with --policy-base-url: the served name; without: a checkpoint for a second "
        "in-process vllm engine (with --engine vllm and its flags: split the GPU between "
        "the two with --gpu-memory-utilization)",
    )
    group.add_argument("--policy-tokenizer", help="with --policy-base-url: a local tokenizer")
    return group


def policy_engine_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, verifier_engine: Engine
) -> Engine:
    """The policy engine the flags of :func:`add_policy_engine_arguments` describe: an openai
    engine on the ``--policy-base-url`` servers (with ``--api-key-env`` and
    ``--max-concurrency``), else a vllm engine of ``--policy-model`` (with the vllm flags),
    else ``verifier_engine`` itself. The caller closes it unless it is ``verifier_engine``."""
    options = policy_engine_options(parser, args)
    return verifier_engine if options is None else make_engine(**options)


def policy_engine_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """The :func:`~genprm.backends.make_engine` options of :func:`policy_engine_from_args`,
    or None when the verifier's engine writes the solutions."""
    if args.policy_base_urls:
        return _openai_options(
            args, args.policy_base_urls, args.policy_model, args.policy_tokenizer
        )
    if args.policy_tokenizer is not None:
        parser.error("--policy-tokenizer is for --policy-base-url")
    if args.policy_model:
        return _vllm_options(args, args.policy_model)
    return None


def _vllm_options(args: argparse.Namespace, model: str | None) -> dict:
    return dict(
        engine="vllm",
        model=model,
        tensor_parallel_size=args.tp,
        data_parallel_size=args.dp,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
    )


def _openai_options(
    args: argparse.Namespace, base_urls: list[str], model: str | None, tokenizer: str | None
) -> dict:
    return dict(
        engine="openai",
        base_urls=base_urls,
        model=model,
        tokenizer=tokenizer,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
    )
