"""Entry point of rule adapt_mlm: the last shard is held out for the masked-token accuracy."""

from bertdistill.launch import run_stage
from bertdistill.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    shards = list(sm.input.shards)
    kwargs = dict(teacher=sm.input.teacher, shards=shards[:-1] or shards, heldout=shards[-1:], output=sm.output[0],
                  train=dict(sm.params.train), heldout_examples=int(sm.params.heldout_examples),
                  snapshot_dir=sm.params.snapshot_dir)
    run_stage("adapt_mlm", kwargs, nproc=int(sm.resources.gpu))
