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
