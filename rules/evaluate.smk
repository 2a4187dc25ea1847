"""Per task: evaluation of student and teacher on the held-out test split (and dev, where
checkpoints were selected), results/{task}_final/."""


rule task_final:
    input:
        unpack(final_inputs),
    output:
        output=directory("results/{task}_final"),
    log:
        "logs/{task}/final.log",
    benchmark:
        "logs/timing/{task}/final.tsv"
    conda:
        "../envs/train.yaml"
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
