"""Critique-refine's report: the metrics per turn (``metrics.json``), ``report.md`` and the
accuracy-per-turn plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from genprm.runs import write_files

from .turns import MAX_TURNS

METRICS = "metrics.json"
REPORT = "report.md"
PLOT = "accuracy_per_turn.png"


def refine_metrics(lines: list[dict], max_turns: int = MAX_TURNS) -> dict:
    """Per turn k = 0..max_turns: ``accuracy`` (percent of problems whose current solution
    after turn k is correct; one not sent back at turn k keeps its last solution),
    ``refined`` (solutions sent back to the policy at turn k), ``changed`` (of those, how
    many got another final answer than before), ``fixed`` / ``broken`` (wrong -> correct,
    correct -> wrong at turn k). Turn 0 is the first solution: 0 refined, changed, fixed,
    broken."""
    turns = list(range(max_turns + 1))
    metrics: dict[str, Any] = {"n": len(lines), "turns": turns}
    for key in ("accuracy", "changed", "refined", "fixed", "broken"):
        metrics[key] = []
    for k in turns:
        current = [line["turns"][min(k, len(line["turns"]) - 1)] for line in lines]
        correct = sum(bool(turn["correct"]) for turn in current)
        metrics["accuracy"].append(100.0 * correct / len(lines) if lines else 0.0)
        pairs = [
            (line["turns"][k - 1], line["turns"][k])
            for line in lines
            if k and len(line["turns"]) > k
        ]
        metrics["refined"].append(len(pairs))
        metrics["changed"].append(sum(a["final_answer"] != b["final_answer"] for a, b in pairs))
        metrics["fixed"].append(sum(not a["correct"] and b["correct"] for a, b in pairs))
        metrics["broken"].append(sum(a["correct"] and not b["correct"] for a, b in pairs))
    return metrics


def write_report(out: Path, metrics: dict, settings: dict, title: str, notes=()) -> None:
    """``metrics.json``, ``report.md`` and ``accuracy_per_turn.png`` in ``out``, atomically."""
    contents = {
        METRICS: (json.dumps(metrics, indent=2) + "\n").encode(),
        REPORT: _markdown(metrics, settings, title, list(notes)).encode(),
        PLOT: _chart_png(metrics, title),
    }
    write_files(out, contents)


def _markdown(metrics: dict, settings: dict, title: str, notes: list[str]) -> str:
    lines = [f"# Critique-refine: {title}", "", f"{metrics['n']} problems.", ""]
    lines += ["| turn | accuracy (%) | refined | changed answer | wrong -> correct "
              "| correct -> wrong |", "|---" * 6 + "|"]  # fmt: skip
    for k in metrics["turns"]:
        lines.append(
            f"| {k} | {metrics['accuracy'][k]:.1f} | {metrics['refined'][k]} "
            f"| {metrics['changed'][k]} | {metrics['fixed'][k]} | {metrics['broken'][k]} |"
        )
    lines += [
        "",
        "Accuracy at turn k: every problem's current solution after turn k (one the verifier "
        "accepted, or could not score, stands unchanged). Refined: solutions sent back to the "
        "policy at turn k (their first step with reward < 0.5 and its critique). Changed "
        "answer: of those, the ones whose final answer differs from the previous turn's.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2, ensure_ascii=False, default=str),
        "```",
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _chart_png(metrics: dict, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(metrics["turns"], metrics["accuracy"], marker="o")
    for k, value in zip(metrics["turns"], metrics["accuracy"]):
        axes.annotate(f"{value:.1f}", (k, value), textcoords="offset points", xytext=(0, 6),
                      ha="center")  # fmt: skip
    axes.set_xticks(metrics["turns"])
    axes.set_ylim(0, 105)
    axes.set_xlabel("refine turn")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    return image.getvalue()
