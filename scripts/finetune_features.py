"""Entry point of rule finetune_features: the original training split's features (stages.split_features)."""

from pathlib import Path

from bertdistill.logs import log_to
from bertdistill.stages import split_features

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    n = split_features(sm.wildcards.task, sm.input.train, Path(sm.input.teacher) / "vocab.txt", sm.output[0],
                       training=True, settings=dict(sm.params.settings))
    log.info("features: %d", n)
