"""Entry point of rule task_final: map the snakemake object onto stages.task_final."""

from bertdistill.logs import log_to
from bertdistill.stages import task_final

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    metrics = task_final(sm.wildcards.task, sm.input.student, sm.input.teacher, sm.input.dev_features, sm.input.dev,
                         sm.output[0], stages={
                             **{f"general_{p.rstrip('/').split('/')[-1]}": p for p in sm.input.general},
                             "features": sm.input.features, "backbone": sm.input.backbone,
                             "prediction": sm.input.student},
                         eval_batch_size=sm.params.eval_batch_size, n_best=sm.params.n_best,
                         max_answer_length=sm.params.max_answer_length)
    log.info("%s", metrics)
