"""Entry point of rule finetune_teacher: map the snakemake object onto stages.finetune_teacher."""

from bertdistill.launch import run_stage
from bertdistill.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    kwargs = dict(task=sm.wildcards.task, teacher=sm.input.teacher, features=sm.input.features,
                  dev_features=sm.input.dev_features, dev=sm.input.dev, output=sm.output[0],
                  train=dict(sm.params.train), eval_batch_size=sm.params.eval_batch_size,
                  snapshot_dir=sm.params.snapshot_dir)
    run_stage("finetune_teacher", kwargs, nproc=int(sm.resources.gpu))
