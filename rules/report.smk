"""The files `snakemake --report report.html` embeds (results/report/), with captions in report/."""

from types import SimpleNamespace


def training_runs():
    """Every model the trainer wrote, by report name: the folders whose curves the report plots."""
    runs = {f"general_{p}": f"results/general/{p}" for p in ("phase1", "phase2")}
    if mlm_dir() == "results/adapt_mlm" and augmented_files():
        runs["adapt_mlm"] = "results/adapt_mlm"
    for task in task_names():
        wc = SimpleNamespace(task=task)
        if task_teacher_dir(wc) == f"results/teachers/{task}":
            runs[f"{task}_teacher"] = f"results/teachers/{task}"
        runs[f"{task}_backbone"] = f"results/{task}/backbone"
        runs[f"{task}_prediction"] = f"results/{task}/prediction"
        if config["tasks"][task]["no_distillation"]["enabled"]:
            runs[f"{task}_no_distillation"] = f"results/{task}/no_distillation"
    return runs


def augmented_files():
    """The augmented training files this run builds (rule augment_gather)."""
    return [
        f"results/{task}/augmented/train_aug.{get_task(task).data_ext}"
        for task in task_names()
        if config["tasks"][task]["augment"]["enabled"]
    ]


def report_targets():
    """What `snakemake --report` shows: built by the default target so the report finds them."""
    targets = expand("results/report/training/{run}.svg", run=training_runs())
    if task_names():
        targets.append("results/report/metrics.html")
    if augmented_files():
        targets.append("results/report/augmentation.html")
    if task_names() or config["benchmark"]["shapes"]:
        targets.append("results/report/speed.html")
    return targets


rule report_training_curves:
    input:
        model=lambda wc: training_runs()[wc.run],
    output:
        output=report(
            "results/report/training/{run}.svg",
            caption="../report/training.rst",
            category="2. Training",
            labels={"run": "{run}"},
        ),
    log:
        "logs/report/training_{run}.log",
    benchmark:
        "logs/timing/report/training_{run}.tsv"
    wildcard_constraints:
        run="|".join(training_runs()) or "none",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/run_stage.py"


rule report_metrics:
    input:
        finals=expand("results/{task}_final", task=task_names()),
        exports=expand("results/{task}_onnx", task=task_names()),
    output:
        output=report(
            "results/report/metrics.html",
            caption="../report/metrics.rst",
            category="1. Metrics",
            labels={"table": "metrics"},
        ),
        table=report(
            "results/report/metrics.tsv",
            caption="../report/metrics.rst",
            category="1. Metrics",
            labels={"table": "metrics (TSV)"},
        ),
    log:
        "logs/report/metrics.log",
    benchmark:
        "logs/timing/report/metrics.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/run_stage.py"


rule report_augmentation:
    input:
        augmented=augmented_files(),
    output:
        output=report(
            "results/report/augmentation.html",
            caption="../report/augmentation.rst",
            category="3. Augmentation",
        ),
    log:
        "logs/report/augmentation.log",
    benchmark:
        "logs/timing/report/augmentation.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/run_stage.py"


rule report_speed:
    input:
        benchmark="results/benchmark",
    output:
        output=report(
            "results/report/speed.html",
            caption="../report/speed.rst",
            category="4. Inference speed",
            labels={"view": "tables"},
        ),
        plot=report(
            "results/report/throughput.svg",
            caption="../report/speed.rst",
            category="4. Inference speed",
            labels={"view": "throughput plot"},
        ),
    log:
        "logs/report/speed.log",
    benchmark:
        "logs/timing/report/speed.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/run_stage.py"
