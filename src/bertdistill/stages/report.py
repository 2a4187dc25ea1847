"""Report stages: the files ``snakemake --report`` embeds (results/report/), made from the run's
own records by :mod:`bertdistill.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import report
from .registry import stage


@stage("training-curves", rules=("report_training_curves",))
def training_curves(model: Path, output: Path, run: str) -> dict[str, Any]:
    """``results/report/training/{run}.svg``: a trained model's loss terms, learning rate and dev
    metric against the step, from its ``train.csv`` and ``distill.json``.

    Args:
        model: a folder written by the trainer (``train.csv``, ``distill.json``)
        output: the SVG to write
        run: the name shown in the title (e.g. ``squad_prediction``)
    """
    return report.plot_training(model, output, run.replace("_", " "))


@stage("metrics-table", rules=("report_metrics",))
def metrics_table(finals: list[Path], output: Path, table: Path, exports: list[Path] | None = None) -> dict[str, Any]:
    """``results/report/metrics.{html,tsv}``: per task, teacher, distilled student, its INT8 copy,
    the no-distillation baseline and the trivial baseline on the reported split with dev beside;
    parameters, size on disk, retention.

    Args:
        finals: the tasks' final folders (``metrics.json``)
        output: the HTML table
        table: the same rows as TSV
        exports: the tasks' export folders (``export.json``: INT8 metrics), when exported
    """
    rows = report.write_metrics(finals, exports or [], output, table)
    return {"rows": len(rows)}


@stage("augmentation-report", rules=("report_augmentation",))
def augmentation_report(augmented: list[Path], output: Path) -> dict[str, Any]:
    """``results/report/augmentation.html``: each augmented training file's statistics and
    original examples beside their augmented copies.

    Args:
        augmented: augmented training files (with their ``.stats.json`` and ``.samples.json``)
        output: the HTML page
    """
    return report.write_augmentation(augmented, output)


@stage("speed-report", rules=("report_speed",))
def speed_report(benchmark: Path, output: Path, plot: Path) -> dict[str, Any]:
    """``results/report/speed.html`` and ``throughput.svg``: the inference benchmark's tables,
    headline ratios and skipped backends, and its plot.

    Args:
        benchmark: the benchmark folder (``summary.json``, ``throughput.svg``)
        output: the HTML page
        plot: where the throughput plot is copied
    """
    return report.write_speed(benchmark, output, plot)
