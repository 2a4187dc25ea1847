"""Per task: backbone (intermediate-layer) distillation, then prediction-layer distillation; and
the no-distillation baseline (the same student initialisation fine-tuned on plain labels).
"""


rule task_backbone:
    input:
        teacher=task_teacher_dir,
        init=task_init_dir,
        features="results/{task}/features/train.hdf5",
    output:
        output=directory("results/{task}/backbone"),
    log:
        "logs/{task}/backbone.log",
    benchmark:
        "logs/timing/{task}/backbone.tsv"
    conda:
        "../envs/train.yaml"
    threads: lambda wc: config["tasks"][wc.task]["backbone"]["threads"]
    resources:
        gpu=lambda wc: config["tasks"][wc.task]["backbone"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(
            lambda wc: config["tasks"][wc.task]["backbone"]["runtime"]
        ),
    params:
        train=lambda wc: config["tasks"][wc.task]["backbone"]["train"],
        losses=lambda wc: config["tasks"][wc.task]["backbone"]["losses"],
        snapshot_dir="results/{task}/.backbone.snapshots",
    script:
        "../scripts/run_stage.py"


rule task_prediction:
    input:
        unpack(prediction_inputs),
    output:
        output=directory("results/{task}/prediction"),
    log:
        "logs/{task}/prediction.log",
    benchmark:
        "logs/timing/{task}/prediction.tsv"
    conda:
        "../envs/train.yaml"
    threads: lambda wc: config["tasks"][wc.task]["prediction"]["threads"]
    resources:
        gpu=lambda wc: config["tasks"][wc.task]["prediction"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(
            lambda wc: config["tasks"][wc.task]["prediction"]["runtime"]
        ),
        # an evaluation setting, not a param: changing it never reruns the job
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    params:
        train=lambda wc: config["tasks"][wc.task]["prediction"]["train"],
        temperature=lambda wc: config["tasks"][wc.task]["prediction"]["temperature"],
        n_best=lambda wc: config["tasks"][wc.task]["n_best"],
        max_answer_length=lambda wc: config["tasks"][wc.task]["max_answer_length"],
        snapshot_dir="results/{task}/.prediction.snapshots",
    script:
        "../scripts/run_stage.py"


rule task_baseline:
    input:
        teacher=task_init_dir,
        features="results/{task}/features/train.hdf5",
        dev_features="results/{task}/features/dev.hdf5",
        dev=task_data("dev"),
    output:
        output=directory("results/{task}/no_distillation"),
    log:
        "logs/{task}/no_distillation.log",
    benchmark:
        "logs/timing/{task}/no_distillation.tsv"
    conda:
        "../envs/train.yaml"
    threads: lambda wc: config["tasks"][wc.task]["prediction"]["threads"]
    resources:
        gpu=lambda wc: config["tasks"][wc.task]["no_distillation"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(
            lambda wc: config["tasks"][wc.task]["prediction"]["runtime"]
        ),
        # an evaluation setting, not a param: changing it never reruns the job
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    params:
        # the prediction stage's budget and settings: the one thing that differs is the teacher
        train=lambda wc: config["tasks"][wc.task]["prediction"]["train"],
        n_best=lambda wc: config["tasks"][wc.task]["n_best"],
        max_answer_length=lambda wc: config["tasks"][wc.task]["max_answer_length"],
        snapshot_dir="results/{task}/.no_distillation.snapshots",
    script:
        "../scripts/run_stage.py"
