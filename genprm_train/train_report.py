"""``genprm-train-report``: the loss table of a finished training run and where its outputs went.

Reads the ``trainer_state.json`` that the Hugging Face trainer (under axolotl) writes into each
checkpoint, and the W&B run folder (``wandb/latest-run`` under ``$WANDB_DIR`` or the working
directory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

# The trainer names its checkpoints checkpoint-<global step>; other folders (a user's copy such
# as checkpoint-best) are not the trainer's and are passed over.
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def latest_checkpoint(output_dir: Path) -> Path:
    """The trainer checkpoint with the highest step (numerically, not by name)."""
    steps = {
        int(match.group(1)): path
        for path in output_dir.glob("checkpoint-*")
        if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name))
    }
    if not steps:
        raise FileNotFoundError(f"no checkpoint-<step> folder in {output_dir}")
    return steps[max(steps)]


def loss_history(output_dir: Path) -> list[dict]:
    """The logged training steps (step, loss, learning rate, grad norm) of the last checkpoint."""
    state = json.loads((latest_checkpoint(output_dir) / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def wandb_run_dir(wandb_dir: Path | None = None) -> Path | None:
    root = wandb_dir or Path(os.environ.get("WANDB_DIR") or ".") / "wandb"
    latest = root / "latest-run"
    return latest.resolve() if latest.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="genprm-train-report", description="Print the loss table of a training run."
    )
    parser.add_argument("output_dir", type=Path, help="the run's output_dir from the axolotl YAML")
    parser.add_argument(
        "--wandb-dir", type=Path, help="W&B folder (default: $WANDB_DIR/wandb or ./wandb)"
    )
    args = parser.parse_args(argv)
    try:
        history = loss_history(args.output_dir)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
        print(f"genprm-train-report: {error}", file=sys.stderr)
        return 1
    if not history:
        print(f"genprm-train-report: no logged loss in {args.output_dir}", file=sys.stderr)
        return 1

    print(f"{'step':>6}  {'loss':>10}  {'learning_rate':>14}  {'grad_norm':>10}")
    for entry in history:
        print(
            f"{entry['step']:>6}  {entry['loss']:>10.4f}  {entry.get('learning_rate', float('nan')):>14.3e}"
            f"  {entry.get('grad_norm', float('nan')):>10.3f}"
        )
    first, last = history[0]["loss"], history[-1]["loss"]
    change = f" ({last / first:.1%} of the first step's)" if first else ""
    print(f"\nloss {first:.4f} -> {last:.4f}{change}")
    final = args.output_dir / "model.safetensors"
    print(f"checkpoint: {final.parent if final.exists() else latest_checkpoint(args.output_dir)}")
    run = wandb_run_dir(args.wandb_dir)
    print(
        f"W&B run: {run if run else 'none found'}"
        + (
            " (offline: `wandb sync` it to upload)"
            if run and run.name.startswith("offline-")
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
