"""Augmentation: word vectors converted once; per task, a scatter over shards, then a gather."""


wildcard_constraints:
    ext="json|tsv",


rule word_vectors:
    input:
        vectors_input,
    output:
        "resources/vectors/vectors.kv",
    log:
        "logs/assets/word_vectors.log",
    benchmark:
        "benchmarks/assets/word_vectors.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        source=lambda wc: config["vectors"]["source"],
        fmt=lambda wc: config["vectors"]["format"],
    script:
        "../scripts/word_vectors.py"


rule augment_shard:
    input:
        train=lambda wc: config["tasks"][wc.task]["train"]["path"],
        mlm=mlm_dir(),
        vectors="resources/vectors/vectors.kv",
    output:
        "results/{task}/augmented/part_{i}.json",
    log:
        "logs/{task}/augment_{i}.log",
    benchmark:
        "benchmarks/{task}/augment_{i}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: config["augment"]["threads"]
    resources:
        gpu=config["augment"]["gpus"],
        mem_mb=16000,
        runtime=config["augment"]["runtime"],
    params:
        index=lambda wc: int(wc.i),
        num_shards=config["augment"]["num_shards"],
        settings=augment_settings,
    script:
        "../scripts/augment_shard.py"


rule augment_gather:
    input:
        train=lambda wc: config["tasks"][wc.task]["train"]["path"],
        parts=lambda wc: expand(
            "results/{task}/augmented/part_{i}.json",
            task=wc.task,
            i=range(config["augment"]["num_shards"]),
        ),
    output:
        train="results/{task}/augmented/train_aug.{ext}",
        stats="results/{task}/augmented/train_aug.{ext}.stats.json",
        samples="results/{task}/augmented/train_aug.{ext}.samples.json",
    log:
        "logs/{task}/augment_gather_{ext}.log",
    benchmark:
        "benchmarks/{task}/augment_gather_{ext}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/augment_gather.py"
