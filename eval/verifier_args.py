"""The GenPRM verifier's command-line flags, shared by the ``genprm-eval`` commands that score
steps: declared by :func:`add_verifier_arguments`, recorded (for resuming) by
:func:`verifier_settings`, turned into a verifier by :func:`make_verifier`.

>>> import argparse
>>> from genprm.cli import add_engine_arguments, resolve_defaults
>>> parser = argparse.ArgumentParser()
>>> add_verifier_arguments(parser)
>>> add_engine_arguments(parser)
>>> parser.add_argument("--concurrency", type=int, default=64)  # doctest: +ELLIPSIS
_StoreAction(...)
>>> args = parser.parse_args(["--maj", "8", "--mode", "cot", "--model", "GenPRM/GenPRM-7B"])
>>> resolve_defaults(args, VERIFIER_DEFAULTS)  # a model: the paper's defaults, nothing to say
>>> verifier_settings(args)
{'maj': 8, 'mode': 'cot', 'history': 'shared', 'prompt_style': 'train', 'budget': 2048}
>>> verifier_settings(parser.parse_args(["--verifier", "critic", "--critic-samples", "8"]))
{'critic_samples': 8}
>>> from genprm.testing import ScriptedEngine
>>> verifier = make_verifier(args, ScriptedEngine({}), sandbox=None, seed=3)
>>> verifier.maj, verifier.mode, verifier.concurrency, verifier.seed
(8, 'cot', 64, 3)
"""

from __future__ import annotations

import argparse
import os

from genprm.cli import ENGINE_DEFAULTS
from genprm.verifier import BUDGET, HISTORIES, MODES, PROMPT_STYLES, GenPRMVerifier

# The embedded 135M model fills any budget it gets: 2048 tokens a step would take it an hour
# on a laptop for two solutions (genprm.cli.resolve_defaults).
EMBEDDED_BUDGET = 96
VERIFIER_DEFAULTS = {**ENGINE_DEFAULTS, "budget": (BUDGET, EMBEDDED_BUDGET)}


def add_verifier_arguments(parser: argparse.ArgumentParser, *, critic: bool = True) -> None:
    """The GenPRM verifier's flags (``--maj``, ``--mode``, ``--history``, ``--prompt-style``,
    ``--budget``), the sandbox's (``--sandbox-workers``, ``--bwrap``) and, with ``critic``,
    ``--verifier {genprm,critic}`` and ``--critic-samples``. The command declares
    ``--concurrency`` (its help names what is in flight) and the critic's token limit."""
    # with a critic to choose instead, the GenPRM-only flags say so
    only = "genprm" if critic else None
    genprm = f"{only}: " if only else ""
    if critic:
        parser.add_argument("--verifier", choices=("genprm", "critic"), default="genprm")
    parser.add_argument("--maj", type=int, default=1, help=f"{genprm}Maj@N samples per step")
    parser.add_argument("--mode", choices=MODES, default="cot+code", help=only)
    parser.add_argument("--history", choices=HISTORIES, default="shared", help=only)
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
        help="sandbox processes: the verifier's code (cot+code) and answer grading",
    )
    parser.add_argument("--bwrap", action="store_true", help="run the sandbox in bubblewrap")


def verifier_settings(args: argparse.Namespace) -> dict:
    """The verifier's entries of a run's settings (what its stored scores depend on): the
    GenPRM flags, or ``critic_samples`` for the critic (whose token limit the command adds
    under its own key)."""
    if getattr(args, "verifier", "genprm") == "critic":
        return {"critic_samples": args.critic_samples}
    return {
        "maj": args.maj,
        "mode": args.mode,
        "history": args.history,
        "prompt_style": args.prompt_style,
        "budget": args.budget,
    }


class VerifierTools:
    """What a scoring command works with, made from the flags' engine options (here, or in
    each Ray actor): ``engine``, ``policy_engine`` (``engine`` itself without
    ``policy_options``), a ``sandbox`` when asked for (``cot+code`` and answer grading) and,
    for ``--verifier genprm``, the ``verifier``. Close it (or use ``with``)."""

    def __init__(
        self,
        args: argparse.Namespace,
        engine_options: dict,
        policy_options: dict | None = None,
        *,
        sandbox: bool = True,
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
                # unseeded, as in processbench
                self.verifier = make_verifier(args, self.engine, self.sandbox)
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
    ``sandbox`` (owned and closed by the caller) runs its code in ``cot+code`` mode only."""
    return GenPRMVerifier(
        engine,
        sandbox if args.mode == "cot+code" else None,
        maj=args.maj,
        mode=args.mode,
        history=args.history,
        prompt_style=args.prompt_style,
        budget=args.budget,
        concurrency=args.concurrency,
        seed=seed,
    )
