"""Entry point of rule describe_teacher: write a model folder's JSON summary."""

from bertdistill.logs import log_to
from bertdistill.stages import describe_model

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    summary = describe_model(snakemake.input[0], snakemake.output[0])  # noqa: F821
    log.info("%s", summary)
