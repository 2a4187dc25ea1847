"""Entry point of rule corpus: map the snakemake object onto stages.corpus."""

from bertdistill.logs import log_to
from bertdistill.stages import corpus

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    p = snakemake.params  # noqa: F821
    out = snakemake.output  # noqa: F821
    log.info("%s", corpus(list(p.sources), out.sentences, out.stats, punkt_train_chars=p.punkt_train_chars))
