"""Entry point of rules general_phase1/2: map the snakemake object onto stages.general_distill
(several processes under torchrun when the rule has gpu > 1)."""

from bertdistill.launch import run_stage
from bertdistill.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    kwargs = dict(
        teacher=sm.input.teacher,
        shards=list(sm.input.shards),
        output=sm.output[0],
        train=dict(sm.params.train),
        losses=dict(sm.params.losses),
        student=dict(sm.params.student) if sm.params.student else None,
        init=sm.input.get("init"),
        snapshot_dir=sm.params.snapshot_dir,
        phase=sm.rule.removeprefix("general_"),
    )
    run_stage("general_distill", kwargs, nproc=int(sm.resources.gpu))
