"""Entry point of rule task_prediction (torchrun when the rule has gpu > 1)."""

from bertdistill.launch import run_stage
from bertdistill.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    kwargs = dict(task=sm.wildcards.task, teacher=sm.input.teacher, backbone=sm.input.backbone,
                  features=sm.input.features, dev_features=sm.input.dev_features, dev=sm.input.dev,
                  output=sm.output[0], train=dict(sm.params.train), teacher_logits=sm.input.get("logits"),
                  temperature=sm.params.temperature, eval_batch_size=sm.params.eval_batch_size,
                  snapshot_dir=sm.params.snapshot_dir)
    run_stage("task_prediction", kwargs, nproc=int(sm.resources.gpu))
