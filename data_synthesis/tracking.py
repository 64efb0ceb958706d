"""W&B logging for ``genprm-synth --wandb-project``: each stage's totals as it finishes, the MC
values and labels as histograms, and a table of sample records (offline with WANDB_MODE)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import SynthConfig
from .runner import StageSummary

SAMPLE_RECORDS = 20
SAMPLE_COLUMNS = ("id", "problem", "steps", "mc", "labels", "first_error", "judge_first_error")


class Tracker:
    """A W&B run (its files under ``directory``) when ``project`` is given; every method does
    nothing otherwise."""

    def __init__(self, project: str | None, command: str, config: SynthConfig, directory: Path):
        self.run = None
        if project:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project,
                dir=str(directory),
                job_type=f"synth-{command}",
                config={"command": command, "config": config.source, **config.raw},
            )

    def stage(self, summary: StageSummary) -> None:
        if self.run is None:
            return
        import wandb

        logged: dict[str, Any] = {
            f"{summary.stage}/{key}": value for key, value in summary.totals.items()
        }
        logged[f"{summary.stage}/records"] = summary.finished
        records = _records(summary.output)
        if summary.stage == "rollout":
            values = [value for record in records for value in record.get("mc") or []]
            if values:
                logged["rollout/mc"] = wandb.Histogram(values)
        if summary.stage == "label":
            labels = [label for record in records for label in record.get("labels") or []]
            if labels:
                logged["label/labels"] = wandb.Histogram(labels)
            errors = [record["first_error"] for record in records if "first_error" in record]
            if errors:
                logged["label/first_error"] = wandb.Histogram(errors)
        if records:
            table = wandb.Table(columns=list(SAMPLE_COLUMNS))
            for record in records[:SAMPLE_RECORDS]:
                table.add_data(*(_cell(record.get(column)) for column in SAMPLE_COLUMNS))
            logged[f"{summary.stage}/samples"] = table
        self.run.log(logged)

    def export(self, exported: dict[str, Any], out: Path) -> None:
        if self.run is not None:
            self.run.log({f"export/{key}": value for key, value in exported.items()})
            self.run.summary["export_dir"] = str(out)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else json.dumps(value)
