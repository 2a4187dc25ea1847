"""Entry point of rule sst2_data: Rotten Tomatoes snippets -> GLUE SST-2 TSV files."""

from pathlib import Path

from bertdistill.logs import log_to
from bertdistill.stages import sst2_data

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    sm = snakemake  # noqa: F821
    log.info("%s", sst2_data(dict(sm.params.source), Path(sm.output.train).parent, sm.params.dev_fraction,
                             sm.params.max_train))
