"""General distillation: phase 1 (seq 128, student from its config) and phase 2 (seq 512, from phase 1)."""


rule general_phase1:
    input:
        teacher=general_teacher_dir(),
        shards=phase_shards("phase1"),
    output:
        output=directory("results/general/phase1"),
    log:
        "logs/general/phase1.log",
    benchmark:
        "logs/timing/general/phase1.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["general"]["phase1"]["threads"]
    resources:
        gpu=config["general"]["phase1"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(config["general"]["phase1"]["runtime"]),
    params:
        train=lambda wc: config["general"]["phase1"]["train"],
        losses=lambda wc: config["general"]["losses"],
        student=lambda wc: config["student"],
        reader=lambda wc: config["general"]["reader"],
        phase="phase1",
        snapshot_dir="results/general/.phase1.snapshots",
    script:
        "../scripts/run_stage.py"


rule general_phase2:
    input:
        teacher=general_teacher_dir(),
        shards=phase_shards("phase2"),
        init="results/general/phase1",
    output:
        output=directory("results/general/phase2"),
    log:
        "logs/general/phase2.log",
    benchmark:
        "logs/timing/general/phase2.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["general"]["phase2"]["threads"]
    resources:
        gpu=config["general"]["phase2"]["gpus"],
        mem_mb=16000,
        runtime=attempt_runtime(config["general"]["phase2"]["runtime"]),
    params:
        train=lambda wc: config["general"]["phase2"]["train"],
        losses=lambda wc: config["general"]["losses"],
        reader=lambda wc: config["general"]["reader"],
        phase="phase2",
        snapshot_dir="results/general/.phase2.snapshots",
    script:
        "../scripts/run_stage.py"
