"""Entry point of rule task_backbone (torchrun when the rule has gpu > 1)."""

from bertdistill.launch import run_stage
from bertdistill.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    kwargs = dict(task=sm.wildcards.task, teacher=sm.input.teacher, init=sm.input.init, features=sm.input.features,
                  output=sm.output[0], train=dict(sm.params.train), losses=dict(sm.params.losses),
                  snapshot_dir=sm.params.snapshot_dir)
    run_stage("task_backbone", kwargs, nproc=int(sm.resources.gpu))
