"""Deployment: ONNX export per task (results/{task}_onnx), the random-weight pairs of
benchmark.shapes (results/benchmark_shapes/{shape}), the inference benchmark (results/benchmark),
the Hub-ready model folder with its model card (results/{task}_model).
"""


rule export_onnx:
    input:
        unpack(export_inputs),
    output:
        output=directory("results/{task}_onnx"),
    log:
        "logs/{task}/export_onnx.log",
    benchmark:
        "logs/timing/{task}/export_onnx.tsv"
    conda:
        "../envs/deploy.yaml"
    threads: lambda wc: config["export"]["threads"] or 2
    resources:
        mem_mb=8000,
        runtime=config["export"]["runtime"],
        # an evaluation setting, not a param: changing it never reruns the job
        eval_batch_size=lambda wc: config["tasks"][wc.task]["eval_batch_size"],
    params:
        n_best=lambda wc: config["tasks"][wc.task]["n_best"],
        max_answer_length=lambda wc: config["tasks"][wc.task]["max_answer_length"],
        settings=export_settings(),
        split=lambda wc: report_split(wc.task),
    script:
        "../scripts/run_stage.py"


rule benchmark_shape:
    output:
        output=directory("results/benchmark_shapes/{shape}"),
    log:
        "logs/benchmark_shapes/{shape}.log",
    benchmark:
        "logs/timing/benchmark_shapes/{shape}.tsv"
    wildcard_constraints:
        shape="|".join(map(re.escape, shape_names())) or "none",
    conda:
        "../envs/deploy.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: config["benchmark"]["shapes"][wc.shape],
    script:
        "../scripts/run_stage.py"


rule inference_benchmark:
    input:
        exports=expand("results/{task}_onnx", task=task_names()),
        shape_exports=expand("results/benchmark_shapes/{shape}", shape=shape_names()),
    output:
        output=directory("results/benchmark"),
    log:
        "logs/benchmark.log",
    benchmark:
        "logs/timing/benchmark.tsv"
    conda:
        "../envs/deploy.yaml"
    # The whole machine: timings must not share cores with other jobs.
    threads: lambda wc: config["benchmark"]["threads"] or 8
    resources:
        gpu=config["benchmark"]["gpus"],
        mem_mb=16000,
        runtime=config["benchmark"]["runtime"],
    params:
        settings=benchmark_settings(),
    script:
        "../scripts/run_stage.py"


rule hub_model:
    input:
        unpack(hub_model_inputs),
    output:
        hub_model_files(),
    log:
        "logs/{task}/hub_model.log",
    benchmark:
        "logs/timing/{task}/hub_model.tsv"
    conda:
        "../envs/deploy.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        output=hub_model_folder,
        license=config["model_card"]["license"],
        base_model=config["model_card"]["base_model"],
        augment=hub_augment_settings,
    script:
        "../scripts/run_stage.py"
