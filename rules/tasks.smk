"""Per task: feature files (their own rule) and the teacher's logits, computed once."""


wildcard_constraints:
    task="|".join(task_names()) or "none",


rule split_dev:
    input:
        train=lambda wc: config["tasks"][wc.task]["train"]["path"],
    output:
        train_output="results/{task}/data/train.{ext}",
        dev_output="results/{task}/data/dev.{ext}",
    log:
        "logs/{task}/split_dev_{ext}.log",
    benchmark:
        "logs/timing/{task}/split_dev_{ext}.tsv"
    wildcard_constraints:
        ext="json|tsv",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        fraction=lambda wc: config["tasks"][wc.task]["dev"]["from_train"],
        seed=lambda wc: config["tasks"][wc.task]["dev"].get("seed", 0),
    script:
        "../scripts/run_stage.py"


rule task_features:
    input:
        train=task_train_path,
        dev=task_data("dev"),
        vocab=general_teacher_dir(),  # every teacher shares the base teacher's vocab (checked)
    output:
        train_output="results/{task}/features/train.hdf5",
        dev_output="results/{task}/features/dev.hdf5",
    log:
        "logs/{task}/features.log",
    benchmark:
        "logs/timing/{task}/features.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=lambda wc: config["tasks"][wc.task]["features"],
    script:
        "../scripts/run_stage.py"


rule finetune_features:
    input:
        train=task_data("train"),
        vocab=general_teacher_dir(),
    output:
        output="results/{task}/features/train_original.hdf5",
    log:
        "logs/{task}/finetune_features.log",
    benchmark:
        "logs/timing/{task}/finetune_features.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=lambda wc: config["tasks"][wc.task]["features"],
    script:
        "../scripts/run_stage.py"


rule test_features:
    input:
        test=task_data("test"),
        vocab=general_teacher_dir(),
    output:
        output="results/{task}/features/test.hdf5",
    log:
        "logs/{task}/test_features.log",
    benchmark:
        "logs/timing/{task}/test_features.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=lambda wc: config["tasks"][wc.task]["features"],
    script:
        "../scripts/run_stage.py"


rule teacher_logits:
    input:
        teacher=task_teacher_dir,
        features="results/{task}/features/train.hdf5",
    output:
        output="results/{task}/teacher_logits.hdf5",
    log:
        "logs/{task}/teacher_logits.log",
    benchmark:
        "logs/timing/{task}/teacher_logits.tsv"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        gpu=lambda wc: min(1, config["tasks"][wc.task]["prediction"]["gpus"]),
        mem_mb=16000,
        runtime=240,
        # an evaluation setting, not a param: changing it never reruns the job
        batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    script:
        "../scripts/run_stage.py"
