"""Entry point of rule task_features: map the snakemake object onto stages.task_features."""

from pathlib import Path

from bertdistill.logs import log_to
from bertdistill.stages import task_features

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    counts = task_features(sm.wildcards.task, sm.input.train, sm.input.dev, Path(sm.input.teacher) / "vocab.txt",
                           sm.output.train, sm.output.dev, dict(sm.params.settings))
    log.info("features: %s", counts)
