"""What every ``genprm-eval`` command does around its run: hold the output folder as its only
writer, read back the ids a resumed run already finished, say an empty selection, and count
scored steps on a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from eval.verifier_args import resume_flags
from genprm.paths import OutputBusy, claim_output, cut_torn_line
from genprm.runs import prepare, stored_settings


def as_only_writer(args, run: Callable[[], int]) -> int:
    """``run()`` (an exit status) as the only writer of the output folder ``args.out``, which
    is checked and locked first (:func:`genprm.paths.claim_output`): before any engine starts,
    a folder that cannot be written or that another run holds is exit status 2. Then the
    embedded model's preset, where one applies (``args.preset``), is named, and the verifier
    flags that a resumed run settles take the folder's stored values
    (:func:`eval.verifier_args.resume_flags`)."""
    try:
        claim = claim_output(args.out, folder=True)
    except (OSError, ValueError, OutputBusy) as error:
        print(f"genprm-eval: {error}", file=sys.stderr)
        return 2
    with claim:
        if getattr(args, "preset", None):
            print(f"genprm-eval: {args.preset}", file=sys.stderr)
        resume_flags(args, stored_settings(args.out))
        return run()


def finished_ids(
    out: Path, settings: dict, results: str, read_ids: Callable[[Path], Iterable[str]]
) -> set[str]:
    """Prepare ``out`` for a run with ``settings`` (:func:`genprm.runs.prepare`); the ids
    already finished in ``out/results`` (read with ``read_ids``, a torn last line cut off
    first)."""
    prepare(out, settings, [results])
    path = out / results
    if not path.exists() or path.stat().st_size == 0:
        return set()
    cut_torn_line(path)
    return set(read_ids(path))


def nothing_selected(source, limit: int | None) -> int:
    """Say that the selection from ``source`` is empty: exit status 0, nothing to do."""
    scope = f" with --limit {limit}" if limit is not None else ""
    print(f"genprm-eval: nothing selected from {source}{scope}; nothing to do", file=sys.stderr)
    return 0


class StepProgress:
    """A progress bar of scored solutions (or samples) that counts their steps: call it with
    each one's step count."""

    def __init__(self, total: int, unit: str, desc: str, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=disable)
        self.steps = 0

    def __call__(self, scored_steps: int) -> None:
        self.steps += scored_steps
        self.bar.update(1)
        self.bar.set_postfix(steps=self.steps)

    def close(self) -> None:
        self.bar.close()
