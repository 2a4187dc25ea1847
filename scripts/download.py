"""Entry point of rule download_teacher: fetch a URL and verify its sha256."""

from bertdistill.assets import download
from bertdistill.logs import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    src = snakemake.params.source  # noqa: F821
    log.info("downloading %s", src["url"])
    download(src["url"], src["sha256"], snakemake.output[0])  # noqa: F821
