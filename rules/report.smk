"""The files `snakemake --report report.html` embeds (results/report/), with captions in report/."""


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
        "../envs/report.yaml"
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
        "../envs/report.yaml"
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
        "../envs/report.yaml"
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
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/run_stage.py"
