"""Entry point of rule teacher_logits: map the snakemake object onto stages.task_teacher_logits."""

from bertdistill.logs import log_to
from bertdistill.stages import task_teacher_logits

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    task_teacher_logits(sm.wildcards.task, sm.input.teacher, sm.input.features, sm.output[0], sm.params.batch_size)
