"""Entry point of rule augment_gather: map the snakemake object onto stages.augment_gather."""

from bertdistill.logs import log_to
from bertdistill.stages import augment_gather

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    stats = augment_gather(sm.wildcards.task, sm.input.train, list(sm.input.parts), sm.output.train,
                           sm.output.stats, sm.output.samples)
    log.info("%s", stats)
