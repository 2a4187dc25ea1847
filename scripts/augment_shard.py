"""Entry point of rule augment_shard: map the snakemake object onto stages.augment_shard."""

from bertdistill.logs import log_to
from bertdistill.stages import augment_shard

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    stats = augment_shard(sm.wildcards.task, sm.input.train, sm.input.mlm, sm.input.vectors, sm.output[0],
                          sm.params.index, sm.params.num_shards, dict(sm.params.settings))
    log.info("%s", stats)
