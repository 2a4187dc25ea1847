"""Per task: dev evaluation of student and teacher, results/{task}_final/."""


rule task_final:
    input:
        student="results/{task}/prediction",
        backbone="results/{task}/backbone",
        general=task_general_dirs,
        features="results/{task}/features/train.hdf5",
        teacher=task_teacher_dir,
        dev_features="results/{task}/features/dev.hdf5",
        dev=task_data("dev"),
    output:
        output=directory("results/{task}_final"),
    log:
        "logs/{task}/final.log",
    benchmark:
        "logs/timing/{task}/final.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        # an evaluation setting, not a param: changing it never reruns the job
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    params:
        n_best=lambda wc: config["tasks"][wc.task]["n_best"],
        max_answer_length=lambda wc: config["tasks"][wc.task]["max_answer_length"],
    script:
        "../scripts/run_stage.py"
