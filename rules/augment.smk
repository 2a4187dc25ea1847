"""Augmentation: word vectors converted once; per task, a scatter over shards, then a gather."""


wildcard_constraints:
    ext="json|tsv",


rule word_vectors:
    input:
        lambda wc: local_paths([config["vectors"]["source"]]),
    output:
        output="resources/vectors/vectors.kv",
    log:
        "logs/assets/word_vectors.log",
    benchmark:
        "logs/timing/assets/word_vectors.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        source=lambda wc: config["vectors"]["source"],
        format=lambda wc: config["vectors"]["format"],
    script:
        "../scripts/run_stage.py"


rule augment_shard:
    input:
        train=task_data("train"),
        mlm=mlm_dir(),
        vectors="resources/vectors/vectors.kv",
    output:
        output="results/{task}/augmented/part_{scatteritem}.json",
    log:
        "logs/{task}/augment_{scatteritem}.log",
    benchmark:
        "logs/timing/{task}/augment_{scatteritem}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["augment"]["threads"]
    resources:
        gpu=config["augment"]["gpus"],
        mem_mb=16000,
        runtime=config["augment"]["runtime"],
    params:
        shard_index=scatter_index,
        num_shards=scatter_count,
        settings=augment_settings,
    script:
        "../scripts/run_stage.py"


rule augment_gather:
    input:
        train=task_data("train"),
        parts=lambda wc: gather.augment(
            "results/{task}/augmented/part_{scatteritem}.json", task=wc.task
        ),
    output:
        output="results/{task}/augmented/train_aug.{ext}",
        stats_output="results/{task}/augmented/train_aug.{ext}.stats.json",
        samples_output="results/{task}/augmented/train_aug.{ext}.samples.json",
    log:
        "logs/{task}/augment_gather_{ext}.log",
    benchmark:
        "logs/timing/{task}/augment_gather_{ext}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/run_stage.py"
