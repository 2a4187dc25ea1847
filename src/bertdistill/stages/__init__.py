"""One function per workflow stage: typed paths in, paths out, settings; grouped by family.

Each stage is registered with ``@stage`` (:mod:`.registry`): the CLI sub-command and the
Snakemake rules that run it. A rule's ``input``/``output``/``params`` names are the function's
parameter names, so the one generic entry ``scripts/run_stage.py`` runs any rule, and
``python -m bertdistill <stage> --help`` is generated from the same signature and docstring.
Adding a stage = one function here + one rule.
"""

from .assets import describe_model, download, import_teacher, squad_cloze, sst2_data, word_vectors
from .augment import adapt_mlm, augment_gather, augment_shard
from .deploy import benchmark, export
from .pretraining import corpus, general_distill, shard
from .registry import STAGES, Stage, StageError, for_rule, stage
from .report import augmentation_report, metrics_table, speed_report, training_curves
from .tasks import (
    finetune_teacher,
    heldout_features,
    split_dev,
    task_backbone,
    task_features,
    task_final,
    task_prediction,
    task_teacher_logits,
    train_features,
)

__all__ = [
    "STAGES",
    "Stage",
    "StageError",
    "for_rule",
    "stage",
    "adapt_mlm",
    "augment_gather",
    "augment_shard",
    "augmentation_report",
    "benchmark",
    "corpus",
    "describe_model",
    "download",
    "export",
    "finetune_teacher",
    "general_distill",
    "heldout_features",
    "metrics_table",
    "import_teacher",
    "shard",
    "speed_report",
    "split_dev",
    "sst2_data",
    "squad_cloze",
    "task_backbone",
    "task_features",
    "task_final",
    "task_prediction",
    "task_teacher_logits",
    "train_features",
    "training_curves",
    "word_vectors",
]
