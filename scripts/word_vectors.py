"""Entry point of rule word_vectors: convert word vectors once to gensim KeyedVectors."""

from bertdistill.logs import log_to
from bertdistill.stages import word_vectors

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    log.info("%d words", word_vectors(dict(sm.params.source), sm.output[0], sm.params.fmt))
