"""Entry point of rule pretraining_shard: map the snakemake object onto stages.shard."""

from pathlib import Path

from bertdistill.logs import log_to
from bertdistill.stages import shard

with log_to(snakemake.log[0]) as log:  # noqa: F821 - injected by Snakemake
    p, inp = snakemake.params, snakemake.input  # noqa: F821
    vocab = Path(inp.teacher) / "vocab.txt"
    n = shard(inp.sentences, vocab, snakemake.output[0], p.index, p.num_shards, p.seed, dict(p.settings))  # noqa: F821
    log.info("%d instances", n)
