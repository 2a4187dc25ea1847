"""What the benchmark scripts that work on a finished run need from the workflow in the current
folder: its config as the Snakefile sees it, and a task's teacher folder and data files as the
rules pick them (``rules/common.smk``: ``task_teacher_dir``, ``task_split_path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml"


def workflow_config() -> dict[str, Any]:
    """``config/config.yaml`` with the schema's defaults filled in, by the ``validate`` the
    Snakefile runs (the file alone lacks every key left at its default)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path("config/config.yaml").read_text())
    validate(config, str(SCHEMA))
    return config


def teacher_dir(results: Path, task: str, t: dict[str, Any]) -> Path:
    """The task's teacher: fine-tuned by the run (``teacher: finetune``) or a configured one."""
    return results / "teachers" / task if t["teacher"] == "finetune" else Path("resources/teachers") / t["teacher"]


def split_paths(results: Path, task: str, t: dict[str, Any]) -> dict[str, Path]:
    """The data file of each evaluation split the task has (dev, and test when configured); a dev
    carved from the training data is the run's ``results/{task}/data/dev.*``."""
    from bertdistill.tasks import get_task

    ext = get_task(task).data_ext
    return {
        split: results / task / "data" / f"{split}.{ext}" if "from_train" in t[split] else Path(t[split]["path"])
        for split in ["dev"] + (["test"] if t.get("test") else [])
    }
