"""Assets: teacher checkpoints (path, URL+sha256 or package), the embedded default's task data
and MLM (adapt_mlm), fine-tuned task teachers."""


wildcard_constraints:
    teacher="|".join(teacher_names()),


rule download_teacher:
    output:
        output="resources/downloads/{teacher}/{filename}",
    log:
        "logs/assets/download_{teacher}_{filename}.log",
    benchmark:
        "logs/timing/assets/download_{teacher}_{filename}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        url=lambda wc: teacher_source(wc)["url"],
        sha256=lambda wc: teacher_source(wc)["sha256"],
    script:
        "../scripts/run_stage.py"


rule import_teacher:
    input:
        teacher_input,
    output:
        output=directory("resources/teachers/{teacher}"),
    log:
        "logs/assets/import_teacher_{teacher}.log",
    benchmark:
        "logs/timing/assets/import_teacher_{teacher}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        source=teacher_import_source,
        head=lambda wc: teacher_setting(wc.teacher, "head"),
        config=lambda wc: teacher_setting(wc.teacher, "config"),
        vocab=lambda wc: teacher_setting(wc.teacher, "vocab"),
    script:
        "../scripts/run_stage.py"


rule describe_teacher:
    input:
        model="resources/teachers/{teacher}",
    output:
        output="resources/teachers/{teacher}.json",
    log:
        "logs/assets/describe_teacher_{teacher}.log",
    benchmark:
        "logs/timing/assets/describe_teacher_{teacher}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../scripts/run_stage.py"


rule sst2_data:
    input:
        lambda wc: local_paths([config["data"]["sst2"]["source"]]),
    output:
        train_output="results/data/sst2/train.tsv",
        dev_output="results/data/sst2/dev.tsv",
        test_output="results/data/sst2/test.tsv",
    log:
        "logs/assets/sst2_data.log",
    benchmark:
        "logs/timing/assets/sst2_data.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        source=lambda wc: config["data"]["sst2"]["source"],
        dev_fraction=lambda wc: config["data"]["sst2"]["dev_fraction"],
        test_fraction=lambda wc: config["data"]["sst2"]["test_fraction"],
        max_train=lambda wc: config["data"]["sst2"]["max_train"],
    script:
        "../scripts/run_stage.py"


rule squad_cloze:
    input:
        local_paths(config["corpus"]["sources"]),
    output:
        train_output="results/data/squad/train-v1.1.json",
        dev_output="results/data/squad/dev-v1.1.json",
        test_output="results/data/squad/test-v1.1.json",
        heldout_output="results/data/squad/heldout_documents.txt",
    log:
        "logs/assets/squad_cloze.log",
    benchmark:
        "logs/timing/assets/squad_cloze.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sources=lambda wc: config["corpus"]["sources"],
        settings=lambda wc: {
            k: v
            for k, v in config["data"]["squad_cloze"].items()
            if k != "exclude_from_corpus"
        },
        punkt_train_chars=lambda wc: config["corpus"]["punkt_train_chars"],
    script:
        "../scripts/run_stage.py"


rule adapt_mlm:
    input:
        teacher=general_teacher_dir(),
        shards=adapt_mlm_shards("train"),
        heldout=adapt_mlm_shards("heldout"),
    output:
        output=directory("results/adapt_mlm"),
    log:
        "logs/assets/adapt_mlm.log",
    benchmark:
        "logs/timing/assets/adapt_mlm.tsv"
    conda:
        "../envs/train.yaml"
    threads: 8
    resources:
        gpu=lambda wc: config["adapt_mlm"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(240),
    params:
        train=lambda wc: config["adapt_mlm"]["train"],
        heldout_examples=lambda wc: config["adapt_mlm"]["heldout_examples"],
        snapshot_dir="results/.adapt_mlm.snapshots",
    script:
        "../scripts/run_stage.py"


rule finetune_teacher:
    input:
        teacher=general_teacher_dir(),
        features=finetune_features,
        dev_features="results/{task}/features/dev.hdf5",
        dev=task_data("dev"),
    output:
        output=directory("results/teachers/{task}"),
    log:
        "logs/{task}/finetune_teacher.log",
    benchmark:
        "logs/timing/{task}/finetune_teacher.tsv"
    conda:
        "../envs/train.yaml"
    threads: 8
    resources:
        gpu=lambda wc: config["tasks"][wc.task]["finetune"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(240),
        # an evaluation setting, not a param: changing it never reruns the job
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    params:
        train=lambda wc: config["tasks"][wc.task]["finetune"]["train"],
        n_best=lambda wc: config["tasks"][wc.task]["n_best"],
        max_answer_length=lambda wc: config["tasks"][wc.task]["max_answer_length"],
        snapshot_dir="results/teachers/.{task}.snapshots",
    script:
        "../scripts/run_stage.py"
