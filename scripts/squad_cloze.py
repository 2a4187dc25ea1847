"""Entry point of rule squad_cloze: cloze questions over the corpus -> SQuAD v1.1 JSON."""

from bertdistill.logs import log_to
from bertdistill.stages import squad_cloze

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    log.info("%s", squad_cloze(list(sm.params.sources), sm.output.train, sm.output.dev, dict(sm.params.settings)))
