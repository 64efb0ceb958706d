"""The GenPRM verifier's command-line flags, shared by the ``genprm-eval`` commands that score
steps: declared by :func:`add_verifier_arguments`, settled from a resumed run by
:func:`resume_flags`, recorded (for resuming) by :func:`verifier_settings`, turned into a
verifier by :func:`make_verifier`.

>>> import argparse
>>> from genprm.cli import add_engine_arguments, resolve_defaults
>>> parser = argparse.ArgumentParser()
>>> add_verifier_arguments(parser)
>>> add_engine_arguments(parser)
>>> parser.add_argument("--concurrency", type=int, default=64)  # doctest: +ELLIPSIS
_StoreAction(...)
>>> args = parser.parse_args(["--maj", "8", "--mode", "cot", "--model", "GenPRM/GenPRM-7B"])
>>> resolve_defaults(args, VERIFIER_DEFAULTS)  # a model: the paper's defaults, nothing to say
>>> resume_flags(args, {})  # a new run (a resumed one: its stored settings)
>>> verifier_settings(args)
{'maj': 8, 'mode': 'cot', 'history': 'independent', 'prompt_style': 'train', 'budget': 2048}
>>> resume_flags(args, {"history": "shared"})  # given or settled, a flag stays
>>> args.history
'independent'
>>> adaptive = parser.parse_args(["--mode", "adaptive", "--ambiguity", "0.2"])
>>> verifier_settings(adaptive)["ambiguity"], "ambiguity" in verifier_settings(args)
(0.2, False)
>>> verifier_settings(parser.parse_args(["--verifier", "critic", "--critic-samples", "8"]))
{'critic_samples': 8}
>>> from genprm.testing import ScriptedEngine
>>> verifier = make_verifier(args, ScriptedEngine({}), sandbox=None, seed=3)
>>> verifier.maj, verifier.mode, verifier.concurrency, verifier.seed
(8, 'cot', 64, 3)
"""

from __future__ import annotations

import argparse
import math
import os

from genprm.cli import ENGINE_DEFAULTS
from genprm.verifier import (
    AMBIGUITY,
    BUDGET,
    CODE_MODES,
    DEFAULT_HISTORY,
    HISTORIES,
    MODES,
    PROMPT_STYLES,
    GenPRMVerifier,
)

# The embedded 135M model fills any budget it gets: 2048 tokens a step would take it an hour
# on a laptop for two solutions (genprm.cli.resolve_defaults).
EMBEDDED_BUDGET = 96
EMBEDDED_MAX_TOKENS = 256  # policy and critic tokens per answer on the embedded model
VERIFIER_DEFAULTS = {**ENGINE_DEFAULTS, "budget": (BUDGET, EMBEDDED_BUDGET)}


def add_verifier_arguments(parser: argparse.ArgumentParser, *, critic: bool = True) -> None:
    """The GenPRM verifier's flags (``--maj``, ``--mode``, ``--ambiguity``, ``--history``,
    ``--prompt-style``, ``--budget``), the sandbox's (``--sandbox-workers``, ``--bwrap``) and,
    with ``critic``, ``--verifier {genprm,critic}`` and ``--critic-samples``. The command
    declares ``--concurrency`` (its help names what is in flight) and the critic's token
    limit. ``--history`` is left None unless given: :func:`resume_flags` settles it."""
    # with a critic to choose instead, the GenPRM-only flags say so
    only = "genprm" if critic else None
    genprm = f"{only}: " if only else ""
    if critic:
        parser.add_argument("--verifier", choices=("genprm", "critic"), default="genprm")
    parser.add_argument("--maj", type=int, default=1, help=f"{genprm}Maj@N samples per step")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="cot+code",
        help=f"{genprm}adaptive judges directly, then with analysis, then with executed code, "
        "while the step's reward is ambiguous",
    )
    parser.add_argument(
        "--ambiguity",
        type=_ambiguity,
        default=AMBIGUITY,
        help=f"{genprm}adaptive: a reward closer than this to 0 or 1 decides the step "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--history",
        choices=HISTORIES,
        help=f"{genprm}Maj@N paths with their own histories ({DEFAULT_HISTORY}: the default, "
        "the paper's) or all continuing path 0's (shared: one request of n=N per step); a "
        "resumed run keeps the one it was started with",
    )
    parser.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default="train",
        help=f"{genprm}train (our checkpoints) or upstream (released GenPRM checkpoints)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        help=f"{genprm}assistant tokens per step (default {BUDGET}; the embedded model: "
        f"{EMBEDDED_BUDGET})",
    )
    if critic:
        parser.add_argument("--critic-samples", type=int, default=1, help="critic: 1 greedy, 8 maj")
    parser.add_argument(
        "--sandbox-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="sandbox processes: the verifier's code (cot+code, adaptive) and answer grading",
    )
    parser.add_argument("--bwrap", action="store_true", help="run the sandbox in bubblewrap")


def _ambiguity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 0.5, got {text!r}")
    return value


def resume_flags(args: argparse.Namespace, stored: dict) -> None:
    """Settle the flags whose default a resumed run overrides, from ``stored`` (the output
    folder's settings; ``{}`` for a new run): ``--history`` not given is the stored value (runs
    started while ``shared`` was the default resume as they were), else DEFAULT_HISTORY."""
    if args.history is None:
        args.history = stored.get("history") or DEFAULT_HISTORY


def verifier_settings(args: argparse.Namespace) -> dict:
    """The verifier's entries of a run's settings (what its stored scores depend on): the
    GenPRM flags (``ambiguity`` in adaptive mode only, so that earlier runs' settings stay
    equal), or ``critic_samples`` for the critic (whose token limit the command adds under its
    own key)."""
    if getattr(args, "verifier", "genprm") == "critic":
        return {"critic_samples": args.critic_samples}
    settings = {
        "maj": args.maj,
        "mode": args.mode,
        "history": _history(args),
        "prompt_style": args.prompt_style,
        "budget": args.budget,
    }
    if args.mode == "adaptive":
        settings["ambiguity"] = args.ambiguity
    return settings


def _history(args: argparse.Namespace) -> str:
    """``--history``: given, settled by :func:`resume_flags`, or the default."""
    return args.history or DEFAULT_HISTORY


class VerifierTools:
    """What a scoring command works with, made from the flags' engine options (here, or in
    each Ray actor): ``engine``, ``policy_engine`` (``engine`` itself without
    ``policy_options``), a ``sandbox`` when asked for (code modes and answer grading) and,
    for ``--verifier genprm``, the ``verifier`` (its requests seeded with ``seed``, if given).
    Close it (or use ``with``)."""

    def __init__(
        self,
        args: argparse.Namespace,
        engine_options: dict,
        policy_options: dict | None = None,
        *,
        sandbox: bool = True,
        seed: int | None = None,
    ):
        from genprm.backends import make_engine
        from genprm.sandbox import Sandbox

        self.engine = self.policy_engine = None
        self.sandbox = self.verifier = None
        try:
            self.engine = make_engine(**engine_options)
            self.policy_engine = self.engine
            if policy_options is not None:
                self.policy_engine = make_engine(**policy_options)
            if sandbox:
                self.sandbox = Sandbox(workers=args.sandbox_workers, bwrap=args.bwrap)
            if getattr(args, "verifier", "genprm") == "genprm":
                self.verifier = make_verifier(args, self.engine, self.sandbox, seed)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
        if self.policy_engine is not None and self.policy_engine is not self.engine:
            self.policy_engine.close()
        if self.engine is not None:
            self.engine.close()
        self.engine = self.policy_engine = self.sandbox = self.verifier = None

    def __enter__(self) -> VerifierTools:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_verifier(
    args: argparse.Namespace, engine, sandbox, seed: int | None = None
) -> GenPRMVerifier:
    """The :class:`~genprm.verifier.GenPRMVerifier` the flags describe, on ``engine``;
    ``sandbox`` (owned and closed by the caller) runs its code in the modes that execute code
    only (``CODE_MODES``)."""
    return GenPRMVerifier(
        engine,
        sandbox if args.mode in CODE_MODES else None,
        maj=args.maj,
        mode=args.mode,
        ambiguity=args.ambiguity,
        history=_history(args),
        prompt_style=args.prompt_style,
        budget=args.budget,
        concurrency=args.concurrency,
        seed=seed,
    )
