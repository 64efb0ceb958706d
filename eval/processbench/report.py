"""The ProcessBench report of one run: ``metrics.json``, ``settings.json``, ``report.md`` (our
F1 beside the paper's and the trivial baselines') and ``f1_per_split.png``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from genprm.runs import write_files

from .data import SPLITS, Row
from .metrics import score

# The spec's column names for SPLITS, in the same order.
COLUMNS = ("GSM8K", "MATH", "Olymp", "Omni")

# F1 from the paper (shared/spec/processbench.md): GSM8K, MATH, Olymp, Omni, Avg. A test checks
# these against the spec's table.
REFERENCE: dict[str, tuple[float, float, float, float, float]] = {
    "Math-Shepherd-PRM-7B": (47.9, 29.5, 24.8, 23.8, 31.5),
    "Skywork-PRM-7B": (70.8, 53.6, 22.9, 21.0, 42.1),
    "Qwen2.5-Math-7B-PRM800K": (68.2, 62.6, 50.7, 44.3, 56.5),
    "Qwen2.5-Math-PRM-7B": (82.4, 77.6, 67.5, 66.3, 73.5),
    "Qwen2.5-Math-PRM-72B": (87.3, 80.6, 74.3, 71.1, 78.3),
    "GenPRM-7B Pass@1": (78.7, 80.3, 72.2, 69.8, 75.2),
    "GenPRM-7B Maj@8": (81.0, 85.7, 78.4, 76.8, 80.5),
    "GenPRM-32B Maj@8": (85.1, 86.3, 78.9, 80.1, 82.6),
    "GPT-4o-0806 (critic)": (79.2, 63.6, 51.4, 53.5, 61.9),
    "o1-mini (critic)": (93.2, 88.9, 87.2, 82.4, 87.9),
}


def trivial_baselines(rows: dict[str, list[Row]]) -> dict[str, dict]:
    """The scores of two one-sided verifiers on ``rows``: both have F1 0, which shows how the
    metric punishes a verifier that only ever gives one answer."""
    ids = [row.id for split_rows in rows.values() for row in split_rows]
    return {
        "always -1": score(rows, dict.fromkeys(ids, -1)),
        "always 0": score(rows, dict.fromkeys(ids, 0)),
    }


def write_report(
    out_dir: Path,
    metrics: dict,
    rows: dict[str, list[Row]],
    settings: dict,
    title: str,
    notes: Iterable[str] = (),
) -> dict[str, Path]:
    """Write the four report files into ``out_dir``, each atomically; returns their paths by
    file name. ``metrics`` is a :func:`~eval.processbench.metrics.score` result for ``rows``;
    ``settings`` is written as given (values JSON cannot hold, such as paths, as their str)."""
    if set(metrics["splits"]) != set(rows):
        raise ValueError(f"metrics cover splits {list(metrics['splits'])}, the rows {list(rows)}")
    notes = [*notes, *_empty_subset_notes(rows)]
    contents = {
        "metrics.json": _json_bytes(metrics),
        "settings.json": _json_bytes(settings),
        "report.md": _markdown(metrics, rows, settings, title, notes).encode(),
        "f1_per_split.png": _chart_png(metrics, title),
    }
    return write_files(Path(out_dir), contents)


def _chart_png(metrics: dict, title: str) -> bytes:
    """A bar chart of the F1 of each split and of the average, as PNG bytes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the ProcessBench report draws its chart with matplotlib: install it"
        ) from error
    # A bare Figure on an Agg canvas leaves pyplot's global state and backend alone.
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = [*(_column(split) for split in metrics["splits"]), "Avg"]
    values = [*(m["f1"] for m in metrics["splits"].values()), metrics["average_f1"]]
    bars = axes.bar(names, values, color=["tab:blue"] * (len(names) - 1) + ["tab:gray"])
    axes.bar_label(bars, fmt="%.1f")
    axes.set_ylim(0, 105)
    axes.set_ylabel("F1 (%)")
    axes.set_title(title)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    return image.getvalue()


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def _column(split: str) -> str:
    return COLUMNS[SPLITS.index(split)]


def _subset_sizes(rows: dict[str, list[Row]]) -> dict[str, tuple[int, int]]:
    """``{split: (erroneous rows, correct rows)}``."""
    sizes = {}
    for split, split_rows in rows.items():
        erroneous = sum(row.label >= 0 for row in split_rows)
        sizes[split] = (erroneous, len(split_rows) - erroneous)
    return sizes


def _empty_subset_notes(rows: dict[str, list[Row]]) -> list[str]:
    notes = []
    for split, (erroneous, correct) in _subset_sizes(rows).items():
        if not correct:
            notes.append(f"{split}: no correct rows (label = -1), so acc_corr is 0 by convention")
        if not erroneous:
            notes.append(f"{split}: no erroneous rows (label >= 0), so acc_err is 0 by convention")
    return notes


def _f1_row(name: str, result: dict) -> str:
    cells = [
        f"{result['splits'][split]['f1']:.1f}" if split in result["splits"] else "–"
        for split in SPLITS
    ]
    return f"| {name} | {' | '.join(cells)} | {result['average_f1']:.1f} |"


def _accuracy(value: float, subset_size: int) -> str:
    return f"{value:.1f}" if subset_size else f"{value:.1f} (no rows)"


def _markdown(
    metrics: dict, rows: dict[str, list[Row]], settings: dict, title: str, notes: list[str]
) -> str:
    runs = {"**this run**": metrics}
    runs.update((f"trivial: {name}", result) for name, result in trivial_baselines(rows).items())
    sizes = _subset_sizes(rows)
    lines = [f"# {title}", "", "## F1 (%)", ""]
    lines += ["| verifier | " + " | ".join(COLUMNS) + " | Avg |", "|---" * (len(COLUMNS) + 2) + "|"]
    lines += [_f1_row(name, result) for name, result in runs.items()]
    for name, values in REFERENCE.items():
        lines.append(f"| paper: {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    if len(rows) < len(SPLITS):
        lines += [
            "",
            f"This run's Avg is over its {len(rows)} split(s); the paper's over all four.",
        ]
    lines += ["", "## Split sizes", ""]
    lines += ["| split | rows | erroneous (label >= 0) | correct (label = -1) |", "|---" * 4 + "|"]
    lines += [
        f"| {split} | {erroneous + correct} | {erroneous} | {correct} |"
        for split, (erroneous, correct) in sizes.items()
    ]
    lines += ["", "## Accuracy per split (%)", ""]
    lines += ["| split | verifier | acc_err | acc_corr | F1 |", "|---" * 5 + "|"]
    for split, (erroneous, correct) in sizes.items():
        for name, result in runs.items():
            split_result = result["splits"][split]
            lines.append(
                f"| {split} | {name} | {_accuracy(split_result['acc_err'], erroneous)} "
                f"| {_accuracy(split_result['acc_corr'], correct)} | {split_result['f1']:.1f} |"
            )
    lines += ["", "## Settings", "", "```json", _json_bytes(settings).decode().rstrip(), "```"]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
