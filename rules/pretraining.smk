"""Corpus -> text shards (Punkt trained on the corpus) -> HDF5 pre-training shards (scatter):
shard job i reads text shard i only."""


wildcard_constraints:
    seq=r"\d+",


rule corpus:
    input:
        local_paths(config["corpus"]["sources"]),
        exclude=corpus_exclude,
    output:
        output=scatter.shards("results/corpus/text_{scatteritem}.txt"),
        stats_output="results/corpus/stats.json",
    log:
        "logs/pretraining/corpus.log",
    benchmark:
        "logs/timing/pretraining/corpus.tsv"
    conda:
        "../envs/data.yaml"
    threads: config["corpus"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        sources=lambda wc: config["corpus"]["sources"],
        punkt_train_chars=config["corpus"]["punkt_train_chars"],
    script:
        "../scripts/run_stage.py"


rule pretraining_shard:
    input:
        sentences="results/corpus/text_{scatteritem}.txt",
        vocab=general_teacher_dir(),
    output:
        output="results/shards/seq{seq}/shard_{scatteritem}.hdf5",
    log:
        "logs/pretraining/shard_seq{seq}_{scatteritem}.log",
    benchmark:
        "logs/timing/pretraining/shard_seq{seq}_{scatteritem}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        shard_index=scatter_index,
        num_shards=scatter_count,
        seed=config["shards"]["seed"],
        settings=shard_settings,
    script:
        "../scripts/run_stage.py"
