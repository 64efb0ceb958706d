"""The Best-of-N report of one run: ``metrics.json``, ``report.md`` (accuracy against n for
every method) and ``bon_curve.png`` (accuracy against n, log2 axis)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from genprm.runs import write_files

from .aggregate import AGGREGATIONS

METRICS, REPORT, CURVE = "metrics.json", "report.md", "bon_curve.png"


def columns(metrics: dict) -> dict[str, list[float]]:
    """The table's columns, by header: pass@n, majority, reward-weighted majority (mean
    aggregation) and best-of-n per aggregation."""
    table = {"pass@n": metrics["pass_at_n"], "majority": metrics["majority"]}
    if "weighted_majority" in metrics:
        table["weighted maj (mean)"] = metrics["weighted_majority"]["mean"]
    table.update((f"BoN {how}", metrics["best_of_n"][how]) for how in AGGREGATIONS)
    return table


def text_table(metrics: dict) -> str:
    """The table for a terminal.

    >>> metrics = {"n": [1, 2], "pass_at_n": [50.0, 100.0], "majority": [50.0, 100.0],
    ...            "best_of_n": {how: [50.0, 0.0] for how in AGGREGATIONS}}
    >>> print(text_table(metrics))
        n   pass@n majority BoN last  BoN min BoN mean BoN product
        1     50.0     50.0     50.0     50.0     50.0        50.0
        2    100.0    100.0      0.0      0.0      0.0         0.0
    """
    table = columns(metrics)
    widths = {name: max(8, len(name)) for name in table}
    lines = [f"{'n':>5} " + " ".join(f"{name:>{widths[name]}}" for name in table)]
    for row, n in enumerate(metrics["n"]):
        cells = " ".join(f"{values[row]:>{widths[name]}.1f}" for name, values in table.items())
        lines.append(f"{n:>5} {cells}")
    return "\n".join(lines)


def write_report(
    out_dir: Path, metrics: dict, settings: dict, title: str, notes: Iterable[str] = ()
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and ``bon_curve.png`` into ``out_dir``, each
    atomically; their paths by file name."""
    contents = {
        METRICS: (json.dumps(metrics, indent=2) + "\n").encode(),
        REPORT: markdown(metrics, settings, title, list(notes)).encode(),
        CURVE: curve_png(metrics, title),
    }
    return write_files(Path(out_dir), contents)


def markdown(metrics: dict, settings: dict, title: str, notes: list[str]) -> str:
    table = columns(metrics)
    lines = [f"# {title}", "", "## Accuracy (%) against the number of samples n", ""]
    lines += ["| n | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for row, n in enumerate(metrics["n"]):
        lines.append(f"| {n} | " + " | ".join(f"{v[row]:.1f}" for v in table.values()) + " |")
    if "single_sample" in metrics:
        lines += ["", f"Single-sample baseline (mean accuracy of one sample): "
                  f"{metrics['single_sample']:.1f}%"]  # fmt: skip
    if "weighted_majority" in metrics:
        lines += ["", "## Reward-weighted majority vote (%) per aggregation", ""]
        lines += [
            "| n | " + " | ".join(AGGREGATIONS) + " |",
            "|---" * (len(AGGREGATIONS) + 1) + "|",
        ]
        for row, n in enumerate(metrics["n"]):
            cells = " | ".join(f"{metrics['weighted_majority'][h][row]:.1f}" for h in AGGREGATIONS)
            lines.append(f"| {n} | {cells} |")
    lines += [
        "",
        "pass@n: any of the n samples is correct. majority: the most frequent final answer "
        "(whitespace removed; ties toward the answer seen first). weighted majority: answers "
        "weighted by the sum of their samples' aggregated rewards. BoN: the sample with the "
        "highest aggregated step reward (last, min, mean or product; ties toward the first). "
        "Each value is averaged over subsets of n samples per problem (every subset when there "
        "are at most `subsets` of them), then over problems.",
    ]
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2, default=str), "```"]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def curve_png(metrics: dict, title: str) -> bytes:
    """Accuracy against n (log2 axis): best-of-n per aggregation, majority and pass@n."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the Best-of-N report draws its curve with matplotlib") from error
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    FigureCanvasAgg(figure)  # a bare Figure on Agg leaves pyplot's global state alone
    axes = figure.add_subplot()
    ns = metrics["n"]
    for how in AGGREGATIONS:
        axes.plot(ns, metrics["best_of_n"][how], marker="o", label=f"best-of-n ({how})")
    axes.plot(ns, metrics["majority"], marker="s", linestyle="--", color="black", label="majority")
    axes.plot(ns, metrics["pass_at_n"], marker="^", linestyle=":", color="gray", label="pass@n")
    if len(ns) > 1:
        axes.set_xscale("log", base=2)
    axes.set_xticks(ns, [str(n) for n in ns])
    axes.set_ylim(0, 105)
    axes.set_xlabel("n (samples per problem)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.legend(fontsize="small")
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    return image.getvalue()
