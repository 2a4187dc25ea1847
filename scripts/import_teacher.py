"""Entry point of rule import_teacher: map the snakemake object onto stages.import_teacher."""

from bertdistill.logs import log_to
from bertdistill.stages import import_teacher

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    p = snakemake.params  # noqa: F821
    source = dict(p.source)
    if source.get("url"):  # already fetched and verified by rule download_teacher
        source = {"path": snakemake.input[0], "url": source["url"]}  # noqa: F821
    out = import_teacher(source, snakemake.output[0], head=p.head, config=p.config, vocab=p.vocab)  # noqa: F821
    log.info("wrote %s", out)
