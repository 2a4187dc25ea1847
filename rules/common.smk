"""Input functions and path helpers shared by the rules.

A rule's named input/output/params items are the keyword arguments of its stage function
(bertdistill.stages); unnamed inputs are dependencies only. Every rule runs
scripts/run_stage.py, which maps the rule onto its stage by name.
"""

import re
from pathlib import Path
from types import SimpleNamespace

from bertdistill.modelcard import MODEL_FILES
from bertdistill.tasks import get_task


def teacher_names():
    return sorted(config["teachers"])


def teacher_setting(name, key):
    return config["teachers"][name].get(key)


def teacher_source(wildcards):
    """The asset source of a teacher as a plain dict (path | url+sha256 | package+subdir)."""
    return dict(config["teachers"][wildcards.teacher]["source"])


def teacher_input(wildcards):
    """A local source is an input (edits to it rerun the import); a URL is downloaded first."""
    src = teacher_source(wildcards)
    if src.get("path"):
        return src["path"]
    if src.get("url"):
        return download_path(wildcards.teacher, src["url"])
    return []


def teacher_import_source(wildcards):
    """What import_teacher reads: a URL source points at its verified download."""
    src = teacher_source(wildcards)
    if src.get("url"):
        return {"path": download_path(wildcards.teacher, src["url"]), "url": src["url"]}
    return src


def download_path(asset, url):
    name = Path(url.split("?")[0]).name or "download"
    return f"resources/downloads/{asset}/{name}"


def all_targets():
    return (
        expand("resources/teachers/{teacher}.json", teacher=teacher_names())
        + ["results/general/phase2"]
        + expand("results/{task}_final", task=task_names())
        + expand("results/{task}_onnx", task=task_names())
        + expand(hub_model_files(), task=task_names())
        + (
            ["results/benchmark"]
            if task_names() or config["benchmark"]["shapes"]
            else []
        )
    )


def attempt_runtime(minutes):
    """SLURM runtime (minutes) of a training job times its attempt number; a job killed at its
    time limit is retried (the profile's `retries`) with more time and resumes from its snapshot.
    """

    def runtime(wildcards, attempt):
        base = minutes(wildcards) if callable(minutes) else minutes
        return base * attempt

    return runtime


def plain_resources(resources):
    """Snakemake resources (profile or command line) as {name: value}: the values as written
    (Snakemake keeps even constants as expressions until a job evaluates them)."""
    out = {}
    for key, value in (resources or {}).items():
        value = getattr(value, "raw", value)
        out[key] = value.strip("'\"") if isinstance(value, str) else value
    return out


def slurm_settings():
    """What bertdistill.cluster.check_slurm reads: default and per-rule resources, max threads."""
    r = workflow.resource_settings
    by_name = {
        name: plain_resources(res) for name, res in r.overwrite_resources.items()
    }
    return plain_resources(r.default_resources), by_name, r.max_threads


def export_settings():
    """The export block without its resource keys (bertdistill.settings.ExportSettings)."""
    return {k: v for k, v in config["export"].items() if k != "runtime"}


def benchmark_settings():
    """The benchmark block without shapes and resource keys (bertdistill.settings.BenchmarkSettings)."""
    skip = ("shapes", "gpus", "runtime")
    return {k: v for k, v in config["benchmark"].items() if k not in skip}


def general_teacher_dir():
    return f"resources/teachers/{config['general']['teacher']}"


def local_paths(sources):
    """Local asset files are inputs (edits rerun the rule); package/URL sources are params only."""
    return [src["path"] for src in sources if src.get("path")]


def scatter_index(wildcards):
    """0-based shard index of a `{scatteritem}` such as 2-of-4."""
    return int(wildcards.scatteritem.split("-of-")[0]) - 1


def scatter_count(wildcards):
    return int(wildcards.scatteritem.split("-of-")[1])


def shard_settings(wildcards):
    s = config["shards"]
    seq = int(wildcards.seq)
    max_predictions = {str(k): v for k, v in s["max_predictions"].items()}
    return {
        "max_seq_length": seq,
        "short_seq_prob": s["short_seq_prob"],
        "masking": s["masking"],
        "masked_lm_prob": s["masked_lm_prob"],
        "max_predictions": max_predictions.get(
            wildcards.seq, max(1, round(seq * s["masked_lm_prob"]))
        ),
        "dupe_factor": s["dupe_factor"],
        "lowercase": s["lowercase"],
    }


def built_shards(seq):
    return gather.shards("results/shards/seq{seq}/shard_{scatteritem}.hdf5", seq=seq)


def adapt_mlm_shards(part):
    """Phase 1's shards: the last one is held out (with a single shard, it is also trained on)."""
    shards = built_shards(config["general"]["phase1"]["seq"])
    return shards[-1:] if part == "heldout" else (shards[:-1] or shards)


def phase_shards(phase):
    """Shards a general-distillation phase reads: configured paths, or the ones we build."""
    p = config["general"][phase]
    return p["shards"] if p.get("shards") else built_shards(p["seq"])


def task_names():
    return sorted(config["tasks"])


def shape_names():
    """The random-weight pairs of benchmark.shapes."""
    return sorted(config["benchmark"]["shapes"])


def task_config(wildcards):
    return config["tasks"][wildcards.task]


def task_teacher_dir(wildcards):
    """A configured teacher, or `finetune`: the base teacher fine-tuned here (finetune_teacher)."""
    name = task_config(wildcards)["teacher"]
    if name == "finetune":
        return f"results/teachers/{wildcards.task}"
    return f"resources/teachers/{name}"


def dev_from_train(task):
    """True when a task's dev split is carved out of its training data (rule split_dev)."""
    return "from_train" in config["tasks"][task]["dev"]


def task_split_path(task, split):
    """A task's `train`, `dev` or `test` data: the configured path, or split_dev's outputs when
    `dev: {from_train: ...}`."""
    if split in ("train", "dev") and dev_from_train(task):
        return f"results/{task}/data/{split}.{get_task(task).data_ext}"
    return config["tasks"][task][split]["path"]


def task_data(split):
    """An input function: a task's `train`, `dev` or `test` data."""
    return lambda wc: task_split_path(wc.task, split)


def has_test(task):
    return config["tasks"][task].get("test") is not None


def report_split(task):
    """The split final metrics report: the held-out test split when configured, else dev."""
    return "test" if has_test(task) else "dev"


def final_inputs(wildcards):
    """task_final: dev (selection, reported beside) and the held-out test split (reported)."""
    task = wildcards.task
    inputs = {
        "student": f"results/{task}/prediction",
        "backbone": f"results/{task}/backbone",
        "general": task_general_dirs(wildcards),
        "features": f"results/{task}/features/train.hdf5",
        "teacher": task_teacher_dir(wildcards),
        "dev_features": f"results/{task}/features/dev.hdf5",
        "dev": task_split_path(task, "dev"),
    }
    if has_test(task):
        inputs["test_features"] = f"results/{task}/features/test.hdf5"
        inputs["test"] = task_split_path(task, "test")
    if config["tasks"][task]["no_distillation"]["enabled"]:
        inputs["no_distillation"] = f"results/{task}/no_distillation"
    return inputs


def export_inputs(wildcards):
    """export_onnx: the final student and its teacher, evaluated on the reported split (and training
    features where INT8 activation scales are calibrated)."""
    task, split = wildcards.task, report_split(wildcards.task)
    inputs = {
        "student": f"results/{task}_final",
        "teacher": task_teacher_dir(wildcards),
        "eval_features": f"results/{task}/features/{split}.hdf5",
        "eval_data": task_split_path(task, split),
    }
    if config["export"]["int8"] and config["export"]["int8_activations"] != "dynamic":
        # calibration on the original training data
        inputs["calibration_features"] = finetune_features(wildcards)
    return inputs


def hub_model_inputs(wildcards):
    """hub_model: the final student and every record its model card reads. The benchmark is
    ancient(): the card waits for it, but a rerun of the benchmark alone (a benchmark setting)
    does not rewrite the model folder."""
    task = wildcards.task
    inputs = {
        "student": f"results/{task}_final",
        "teacher": task_teacher_dir(wildcards),
        "prediction": f"results/{task}/prediction",
        "backbone": f"results/{task}/backbone",
        "general": task_general_dirs(wildcards),
        "features": f"results/{task}/features/train.hdf5",
        "dev_features": f"results/{task}/features/dev.hdf5",
        "export": f"results/{task}_onnx",
        "benchmark": ancient("results/benchmark"),
    }
    if has_test(task):
        inputs["test_features"] = f"results/{task}/features/test.hdf5"
    if config["tasks"][task]["augment"]["enabled"]:
        ext = get_task(task).data_ext
        inputs["augmented"] = f"results/{task}/augmented/train_aug.{ext}.stats.json"
    return inputs


def hub_model_files():
    """The files of results/{task}_model, declared one by one: a directory() output would get
    Snakemake's .snakemake_timestamp, and an upload of the folder would publish it."""
    return [f"results/{{task}}_model/{name}" for name in MODEL_FILES]


def hub_model_folder(wildcards, output):
    """The folder holding hub_model's output files (the stage's `output`)."""
    return str(Path(output[0]).parent)


def hub_augment_settings(wildcards):
    """The augmentation settings the model card states ({} when the task is not augmented)."""
    if not config["tasks"][wildcards.task]["augment"]["enabled"]:
        return {}
    return augment_settings(wildcards)


def cloze_in_use():
    """True when a task reads the cloze SQuAD data the workflow builds (rule squad_cloze)."""
    return any(
        str(t.get(split, {}).get("path", "")).startswith("results/data/squad/")
        for t in config["tasks"].values()
        for split in ("train", "dev", "test")
    )


def corpus_exclude(wildcards):
    """Documents the corpus leaves out: configured digest files, and the held-out articles of the
    cloze data when a task uses it (no model trained on the corpus sees a dev or test context).
    """
    files = list(config["corpus"].get("exclude", []))
    if cloze_in_use() and config["data"]["squad_cloze"].get(
        "exclude_from_corpus", True
    ):
        files.append("results/data/squad/heldout_documents.txt")
    return files


def mlm_dir():
    """The MLM for augmentation: a configured teacher with an MLM head, or `adapted` (adapt_mlm)."""
    name = config["augment"]["mlm"]
    return "results/adapt_mlm" if name == "adapted" else f"resources/teachers/{name}"


def task_init_dir(wildcards):
    """SQuAD starts from phase 2, SST-2 from phase 1 (the reference), or as configured."""
    return f"results/general/{task_config(wildcards)['init']}"


def prediction_inputs(wildcards):
    t = task_config(wildcards)
    inputs = {
        "teacher": task_teacher_dir(wildcards),
        "backbone": f"results/{wildcards.task}/backbone",
        "features": f"results/{wildcards.task}/features/train.hdf5",
        "dev_features": f"results/{wildcards.task}/features/dev.hdf5",
        "dev": task_split_path(wildcards.task, "dev"),
    }
    if t["prediction"]["cached_teacher_logits"]:
        inputs["teacher_logits"] = f"results/{wildcards.task}/teacher_logits.hdf5"
    return inputs


def task_general_dirs(wildcards):
    """General-distillation folders a task's student went through (for per-stage wall time)."""
    init = task_config(wildcards)["init"]
    return ["results/general/phase1"] + (
        ["results/general/phase2"] if init == "phase2" else []
    )


def finetune_features(wildcards):
    """A teacher is fine-tuned on the original training data, never on the augmented copy
    (its inherited labels are noisy, and it is several times larger)."""
    t = task_config(wildcards)
    if t["augment"]["enabled"] or t["use_augmented"]:
        return f"results/{wildcards.task}/features/train_original.hdf5"
    return f"results/{wildcards.task}/features/train.hdf5"


def task_train_path(wildcards):
    """Training data of the task stages: our augmentation (`augment.enabled`), a user-supplied
    augmented file (`use_augmented`), or the original data; all three stay supported."""
    t = task_config(wildcards)
    if t["augment"]["enabled"]:
        ext = get_task(wildcards.task).data_ext
        return f"results/{wildcards.task}/augmented/train_aug.{ext}"
    if t["use_augmented"]:  # with an `augmented` file (bertdistill.config.check_config)
        return t["augmented"]["path"]
    return task_split_path(wildcards.task, "train")


def augment_settings(wildcards):
    a = config["augment"]
    return {
        "n": task_config(wildcards)["augment"]["n"],
        **{
            k: a[k]
            for k in ("m", "p", "seed", "vector_vocab", "max_batch_tokens", "max_texts")
        },
    }


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
