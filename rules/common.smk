"""Input functions and path helpers shared by the rules."""

from pathlib import Path


def teacher_names():
    return sorted(config["teachers"])


def teacher_setting(name, key, default=None):
    return config["teachers"][name].get(key, default)


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


def download_path(asset, url):
    name = Path(url.split("?")[0]).name or "download"
    return f"resources/downloads/{asset}/{name}"


def download_source(wildcards):
    src = teacher_source(wildcards)
    return {"url": src["url"], "sha256": src["sha256"]}


def all_targets():
    return (
        expand("resources/teachers/{teacher}.json", teacher=teacher_names())
        + ["results/general/phase2"]
        + expand("results/{task}_final", task=task_names())
    )


def general_teacher_dir():
    return f"resources/teachers/{config['general']['teacher']}"


def corpus_inputs(wildcards):
    """Local corpus files are inputs (edits rerun the corpus); package sources are params only."""
    return [src["path"] for src in config["corpus"]["sources"] if src.get("path")]


def shard_settings(wildcards):
    s = config["shards"]
    return {
        "max_seq_length": int(wildcards.seq),
        "short_seq_prob": s["short_seq_prob"],
        "masking": s["masking"],
        "masked_lm_prob": s["masked_lm_prob"],
        "max_predictions": {str(k): v for k, v in s["max_predictions"].items()}.get(
            wildcards.seq, max(1, round(int(wildcards.seq) * s["masked_lm_prob"]))
        ),
        "dupe_factor": s["dupe_factor"],
        "lowercase": s["lowercase"],
    }


def phase_shards(phase):
    """Shards a general-distillation phase reads: configured paths, or the ones we build."""
    p = config["general"][phase]
    if p.get("shards"):
        return p["shards"]
    return expand(
        "results/shards/seq{seq}/shard_{i}.hdf5",
        seq=p["seq"],
        i=range(config["shards"]["num_shards"]),
    )


def task_names():
    return sorted(config.get("tasks", {}))


def task_teacher_dir(wildcards):
    """A configured teacher, or `finetune`: the base teacher fine-tuned here (finetune_teacher)."""
    name = config["tasks"][wildcards.task]["teacher"]
    if name == "finetune":
        return f"results/teachers/{wildcards.task}"
    return f"resources/teachers/{name}"


def mlm_dir():
    """The MLM for augmentation: a configured teacher with an MLM head, or `adapted` (adapt_mlm)."""
    name = config["augment"]["mlm"]
    return "results/adapt_mlm" if name == "adapted" else f"resources/teachers/{name}"


def adapt_mlm_shards(wildcards):
    """Training shards and held-out shards (the last one) of phase 1's sequence length."""
    return expand(
        "results/shards/seq{seq}/shard_{i}.hdf5",
        seq=config["general"]["phase1"]["seq"],
        i=range(config["shards"]["num_shards"]),
    )


def sst2_source_input(wildcards):
    src = config["data"]["sst2"]["source"]
    return [src["path"]] if src.get("path") else []


def task_init_dir(wildcards):
    """SQuAD starts from phase 2, SST-2 from phase 1 (the reference), or as configured."""
    return f"results/general/{config['tasks'][wildcards.task]['init']}"


def prediction_inputs(wildcards):
    t = config["tasks"][wildcards.task]
    inputs = {
        "teacher": task_teacher_dir(wildcards),
        "backbone": f"results/{wildcards.task}/backbone",
        "features": f"results/{wildcards.task}/features/train.hdf5",
        "dev_features": f"results/{wildcards.task}/features/dev.hdf5",
        "dev": t["dev"]["path"],
    }
    if t["prediction"]["cached_teacher_logits"]:
        inputs["logits"] = f"results/{wildcards.task}/teacher_logits.hdf5"
    return inputs


def task_general_dirs(wildcards):
    """General-distillation folders a task's student went through (for per-stage wall time)."""
    init = config["tasks"][wildcards.task]["init"]
    return ["results/general/phase1"] + (
        ["results/general/phase2"] if init == "phase2" else []
    )


AUGMENTED_EXT = {"squad": "json", "sst2": "tsv"}


def finetune_features(wildcards):
    """A teacher is fine-tuned on the original training data, never on the augmented copy
    (its inherited labels are noisy, and it is several times larger)."""
    t = config["tasks"][wildcards.task]
    if t["augment"]["enabled"] or t["use_augmented"]:
        return f"results/{wildcards.task}/features/train_original.hdf5"
    return f"results/{wildcards.task}/features/train.hdf5"


def task_train_path(wildcards):
    """Training data of the task stages: our augmentation (`augment.enabled`), a user-supplied
    augmented file (`use_augmented`), or the original data; all three stay supported."""
    t = config["tasks"][wildcards.task]
    if t["augment"]["enabled"]:
        task = wildcards.task
        return f"results/{task}/augmented/train_aug.{AUGMENTED_EXT[task]}"
    if t["use_augmented"]:
        if "augmented" not in t:
            raise ValueError(
                f"tasks.{wildcards.task}.use_augmented is true but no `augmented` file is configured"
            )
        return t["augmented"]["path"]
    return t["train"]["path"]


def vectors_input(wildcards):
    src = config["vectors"]["source"]
    return [src["path"]] if src.get("path") else []


def augment_settings(wildcards):
    a, t = config["augment"], config["tasks"][wildcards.task]["augment"]
    return {
        "n": t["n"],
        "m": a["m"],
        "p": a["p"],
        "seed": a["seed"],
        "vector_vocab": a["vector_vocab"],
        "max_batch_tokens": a["max_batch_tokens"],
    }
