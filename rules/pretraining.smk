"""Corpus -> sentences (Punkt trained on the corpus) -> HDF5 pre-training shards (scatter)."""


wildcard_constraints:
    seq=r"\d+",
    i=r"\d+",


rule corpus:
    input:
        corpus_inputs,
    output:
        sentences="results/corpus/sentences.txt",
        stats="results/corpus/stats.json",
    log:
        "logs/pretraining/corpus.log",
    benchmark:
        "benchmarks/pretraining/corpus.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        sources=lambda wc: config["corpus"]["sources"],
        punkt_train_chars=config["corpus"]["punkt_train_chars"],
    script:
        "../scripts/corpus.py"


rule pretraining_shard:
    input:
        sentences="results/corpus/sentences.txt",
        teacher=general_teacher_dir(),
    output:
        "results/shards/seq{seq}/shard_{i}.hdf5",
    log:
        "logs/pretraining/shard_seq{seq}_{i}.log",
    benchmark:
        "benchmarks/pretraining/shard_seq{seq}_{i}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        index=lambda wc: int(wc.i),
        num_shards=config["shards"]["num_shards"],
        seed=config["shards"]["seed"],
        settings=shard_settings,
    script:
        "../scripts/shard.py"
