"""The tasks the workflow distils for, in one registry: :data:`TASKS`.

A task says how its data is read, how its features are built, how a model is evaluated on it,
what trivial baseline it must beat and how its training data is augmented. Stages and rules
only ever ask the registry (``get_task(name)``); nothing else branches on a task's name. A new
GLUE-style task (one sentence or a sentence pair, labels in a TSV column) is one
:class:`GlueTask` entry here plus its ``tasks:`` block in the config.

Feature files are HDF5 with one dataset per tensor (``input_ids``, ``attention_mask``,
``token_type_ids``; ``labels`` for classification; ``start_positions``, ``end_positions``,
``example_index``, ``token_to_orig``, ``max_context`` for SQuAD). They are built once by their
own rule (the reference builds them on rank 0 inside training and times out; see
docs/reference.md#known-defects) and read by every later stage.

This module imports neither torch nor the tokenizer at import time: the Snakefile reads the
registry.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data import glue, squad
from .settings import AugmentSettings, FeatureSettings

log = logging.getLogger(__name__)

# Training questions SQuAD may drop (answer not at its answer_start) before feature building
# fails. The SQuAD v1.1 training set loses a handful of 87,599 this way; losing more than half
# means the wrong file, or offsets counted in bytes instead of characters (non-ASCII contexts).
MAX_DROPPED_SHARE = 0.5
# Dropped question ids quoted in the warning and the error.
SHOWN_DROPPED_IDS = 5


class TaskError(ValueError):
    """Task data that cannot be used; the message names the file and the fix."""


class Task(Protocol):
    """What the stages need from a task."""

    name: str
    head: str  # model head: "classification" or "qa"
    metric: str  # the dev metric that selects checkpoints and gives retention
    num_labels: int
    label_names: tuple[str, ...]  # class names in class-index order (config.json id2label); empty for QA
    data_ext: str  # file extension of the training data (and of its augmented copy)
    feature_defaults: Mapping[str, Any]

    def build_features(
        self, source: str | Path, tokenizer, training: bool, settings: FeatureSettings
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def evaluate(
        self,
        model,
        dev_features: Mapping[str, np.ndarray],
        dev: str | Path,
        vocab: str | Path,
        batch_size: int,
        n_best: int,
        max_answer_length: int,
        device: Any = "cpu",
    ) -> tuple[dict[str, float], Any]: ...

    def evaluate_logits(
        self,
        logits: np.ndarray,
        dev_features: Mapping[str, np.ndarray],
        dev: str | Path,
        vocab: str | Path,
        n_best: int,
        max_answer_length: int,
    ) -> tuple[dict[str, float], Any]: ...

    def baseline(self, dev_features: Mapping[str, np.ndarray], dev: str | Path) -> dict[str, Any]: ...

    def augment(
        self, augmentor, train: str | Path, shard_index: int, num_shards: int, settings: AugmentSettings
    ) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]: ...

    def gather(self, train: str | Path, parts: Sequence[Mapping[str, Any]], output: str | Path) -> None: ...


def _logits(model, features: Mapping[str, np.ndarray], batch_size: int, device: Any) -> np.ndarray:
    from .inference import predict_logits

    return predict_logits(model, features, batch_size, device)


def _augmented_count(n: int, settings: AugmentSettings) -> int:
    """How many of the first texts are augmented (``settings.max_texts``; all when None)."""
    return n if settings.max_texts is None else min(n, settings.max_texts)


@dataclass(frozen=True)
class GlueTask:
    """A GLUE-style classification task: one text column or a pair, a label column in a TSV.

    ``label_names`` are what a saved model calls its classes (config.json ``id2label``), in
    class-index order; unset, the label strings of the data (``fmt.labels``), which for most
    GLUE tasks are ``0``/``1`` and say nothing to a user of the model.
    """

    name: str
    fmt: glue.GlueFormat
    label_names: tuple[str, ...] = ()
    max_seq_length: int = 128
    head: str = "classification"
    metric: str = "accuracy"
    data_ext: str = "tsv"

    def __post_init__(self) -> None:
        if not self.label_names:
            object.__setattr__(self, "label_names", tuple(self.fmt.labels))
        if len(self.label_names) != len(self.fmt.labels):
            raise ValueError(
                f"task {self.name}: {len(self.label_names)} label names for {len(self.fmt.labels)} labels "
                f"{list(self.fmt.labels)}; give one name per label, in the same order"
            )

    @property
    def num_labels(self) -> int:
        return len(self.fmt.labels)

    @property
    def feature_defaults(self) -> Mapping[str, Any]:
        return {"max_seq_length": self.max_seq_length}

    def read(self, path: str | Path) -> glue.GlueData:
        return glue.read_glue_tsv(path, self.fmt)

    def build_features(self, source, tokenizer, training, settings):
        data = self.read(source)
        if not data.texts:  # the reader refuses every other kind of row, so only the header is there
            raise TaskError(
                f"{source}: 0 examples; the file has a header row but no examples: point the config at the "
                f"{self.name} {'training' if training else 'dev'} file with its examples"
            )
        arrays = glue.build_features(data.texts, data.labels, tokenizer, settings.max_seq_length)
        return arrays, {"examples": len(data.texts)}

    def evaluate(self, model, dev_features, dev, vocab, batch_size, n_best, max_answer_length, device="cpu"):
        logits = _logits(model, dev_features, batch_size, device)
        return self.evaluate_logits(logits, dev_features, dev, vocab, n_best, max_answer_length)

    def evaluate_logits(self, logits, dev_features, dev, vocab, n_best, max_answer_length):
        """Metrics and predictions from the logits of every dev feature."""
        return {"accuracy": glue.accuracy(logits, dev_features["labels"])}, logits.argmax(-1).tolist()

    def baseline(self, dev_features, dev):
        """The majority class of the dev set."""
        labels = np.asarray(dev_features["labels"])
        share = float(np.bincount(labels, minlength=self.num_labels).max() / max(len(labels), 1))
        return {"kind": "majority class", "accuracy": 100.0 * share}

    def augment(self, augmentor, train, shard_index, num_shards, settings):
        from .augment import augment_classification

        data = self.read(train)
        indices = list(range(shard_index, _augmented_count(len(data.texts), settings), num_shards))
        groups, stats, samples = augment_classification(augmentor, data.texts, indices, settings)
        return {"groups": [(i, rows, data.labels[i]) for i, rows in groups]}, stats, samples

    def gather(self, train, parts, output):
        groups = [g for part in parts for g in part["groups"]]
        data = self.read(train)
        done = {g[0] for g in groups}  # texts past augment.max_texts stay as they are
        groups += [(i, [list(data.texts[i])], data.labels[i]) for i in range(len(data.texts)) if i not in done]
        groups.sort(key=lambda g: g[0])
        rows = [(row, label) for _, variants, label in groups for row in variants]
        glue.write_glue_tsv(output, self.fmt, [r[0] for r in rows], [r[1] for r in rows])


@dataclass(frozen=True)
class SquadTask:
    """Extractive question answering on SQuAD v1.1 JSON: windows of the context, n-best spans,
    the official EM/F1."""

    name: str = "squad"
    head: str = "qa"
    metric: str = "f1"
    num_labels: int = 2  # start and end
    label_names: tuple[str, ...] = ()  # spans, not classes
    data_ext: str = "json"
    feature_defaults: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
    )

    def build_features(self, source, tokenizer, training, settings):
        data = squad.load_squad_json(source)
        drops: list[tuple[str, str]] = []
        examples, dropped = squad.read_squad_examples(data, training=training, drops=drops)
        _check_examples(source, data, len(examples), drops, training)
        feats = squad.build_features(
            examples,
            tokenizer,
            settings.max_seq_length,
            settings.doc_stride,
            settings.max_query_length,
            training=training,
        )
        return feats.arrays(), {"examples": len(examples), "dropped_examples": dropped}

    def evaluate(self, model, dev_features, dev, vocab, batch_size, n_best, max_answer_length, device="cpu"):
        logits = _logits(model, dev_features, batch_size, device)
        return self.evaluate_logits(logits, dev_features, dev, vocab, n_best, max_answer_length)

    def evaluate_logits(self, logits, dev_features, dev, vocab, n_best, max_answer_length):
        """The official EM/F1 and the answers from the start/end logits of every dev feature."""
        from .checkpoints import read_vocab

        data = squad.load_squad_json(dev)
        examples, _ = squad.read_squad_examples(data, training=False)
        feats = squad.SquadFeatures(**{k: dev_features[k] for k in squad.SquadFeatures.__dataclass_fields__})
        preds = squad.postprocess(
            examples, feats, logits[:, 0], logits[:, 1], read_vocab(vocab), n_best, max_answer_length
        )
        return squad.squad_v11_metrics(data, preds), preds

    def baseline(self, dev_features, dev):
        """The first name/number of the paragraph's first sentence (a cloze answer is such a span)."""
        from .data.builders import first_sentence_baseline
        from .data.corpus import train_punkt

        data = squad.load_squad_json(dev)
        contexts = "\n\n".join(p["context"] for a in data for p in a["paragraphs"])
        preds = first_sentence_baseline(data, train_punkt(contexts))
        return {"kind": "first name/number of the first sentence", **squad.squad_v11_metrics(data, preds)}

    def augment(self, augmentor, train, shard_index, num_shards, settings):
        from .augment import augment_squad_paragraphs

        paragraphs = [p for a in squad.load_squad_json(train) for p in a["paragraphs"]]
        indices = list(range(shard_index, _augmented_count(len(paragraphs), settings), num_shards))
        new, stats, samples = augment_squad_paragraphs(augmentor, paragraphs, indices, settings)
        return {"paragraphs": new}, stats, samples

    def gather(self, train, parts, output):
        """The original articles, each followed by the augmented copies of its paragraphs."""
        data = squad.load_squad_json(train)
        flat = [ai for ai, a in enumerate(data) for _ in a["paragraphs"]]
        extra: dict[int, list] = {}
        for part in parts:
            for p in part["paragraphs"]:
                extra.setdefault(p["augmented_from"], []).append(p)
        out = [{**article, "paragraphs": list(article["paragraphs"])} for article in data]
        for gi in sorted(extra):
            out[flat[gi]]["paragraphs"].extend({"context": p["context"], "qas": p["qas"]} for p in extra[gi])
        write_json({"version": "1.1", "data": out}, output)


def _check_examples(
    source: str | Path, data: Sequence[Mapping[str, Any]], kept: int, drops: Sequence[tuple[str, str]], training: bool
) -> None:
    """Refuse SQuAD data that gives no examples, loses most of its training questions, or has a
    dev question without answers (EM/F1 could not score it); warn about the few dropped."""
    total = kept + len(drops)
    if total == 0:
        raise TaskError(
            f"{source}: 0 examples; the file holds no questions ({len(data)} articles in 'data'): "
            "point the config at a SQuAD v1.1 file with questions"
        )
    if not training:
        for where, qa in squad.question_records(data):
            if not qa["answers"]:
                raise TaskError(
                    f"{source}: {where}: no answers; every dev question needs at least one to be scored "
                    "(SQuAD v2.0 unanswerable questions are not supported): use a SQuAD v1.1 dev file"
                )
        return
    if not drops:
        return
    counts = collections.Counter(reason for _, reason in drops)
    why = "; ".join(squad.DROP_REASONS[r] + (f" ({n})" if len(counts) > 1 else "") for r, n in counts.most_common())
    ids = ", ".join(repr(i) for i, _ in drops[:SHOWN_DROPPED_IDS]) + (", ..." if len(drops) > SHOWN_DROPPED_IDS else "")
    log.warning("%s: dropped %d of %d training questions (%s): %s", source, len(drops), total, why, ids)
    if kept == 0:
        raise TaskError(
            f"{source}: 0 examples; all {total} questions were dropped: {why} (e.g. {ids}); "
            "check that this is the training file and that answer_start counts characters, not bytes"
        )
    if len(drops) > MAX_DROPPED_SHARE * total:
        raise TaskError(
            f"{source}: {len(drops)} of {total} training questions were dropped ({why}; e.g. {ids}), more than "
            f"{MAX_DROPPED_SHARE:.0%}: likely the wrong file, or answer_start counted in bytes instead of characters; "
            "fix the offsets or point the config at the right file"
        )


# GLUE's layouts (header names as GLUE ships them); N rounds of augmentation per task are
# TinyBERT's: SST-2 20, MRPC 30, RTE 30, QNLI 20, QQP 10 (set `augment.n` per task). Label names
# follow GLUE's own class order: SST-2 0 = negative, MRPC and QQP 0 = not equivalent / not a
# duplicate; RTE and QNLI write their labels out, entailment first.
_ENTAILMENT = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {
    "squad": SquadTask(),
    "sst2": GlueTask("sst2", glue.SST2, ("negative", "positive")),
    "mrpc": GlueTask("mrpc", glue.GlueFormat(("#1 String", "#2 String"), "Quality"), ("not_equivalent", "equivalent")),
    "rte": GlueTask("rte", glue.GlueFormat(("sentence1", "sentence2"), "label", _ENTAILMENT)),
    "qnli": GlueTask("qnli", glue.GlueFormat(("question", "sentence"), "label", _ENTAILMENT)),
    "qqp": GlueTask("qqp", glue.GlueFormat(("question1", "question2"), "is_duplicate"), ("not_duplicate", "duplicate")),
}


def get_task(name: str) -> Task:
    """The registered task ``name``; a one-line error lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (bertdistill.tasks.TASKS)") from None


def feature_settings(task: Task, settings: FeatureSettings | None) -> FeatureSettings:
    """``settings`` with its unset fields taken from the task's defaults."""
    s = settings or FeatureSettings()
    return dataclasses.replace(s, **{k: v for k, v in task.feature_defaults.items() if getattr(s, k) is None})


def build_task_features(
    task: Task, source: str | Path, vocab: str | Path, training: bool, settings: FeatureSettings | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and attributes of the feature file of one split."""
    from .data.pretraining import vocab_sha256
    from .tokenization import load_tokenizer

    s = feature_settings(task, settings)
    tok = load_tokenizer(vocab, lowercase=s.lowercase)
    arrays, attrs = task.build_features(source, tok, training, s)
    # A 0-row feature file would only fail when training starts ("0 examples are fewer than the
    # 1 ranks"), far from its cause; the tasks say why they have no examples, this is the backstop.
    n = attrs.get("examples", len(arrays["input_ids"]))
    if not n:
        raise TaskError(f"{source}: 0 examples; point the config at a {task.name} file with examples")
    if not len(arrays["input_ids"]):
        raise TaskError(
            f"{source}: 0 features from {n} examples after windowing with {dataclasses.asdict(s)}; "
            "check the feature settings (max_seq_length must leave room for the text)"
        )
    attrs = {
        "task": task.name,
        "source": str(source),
        "vocab_sha256": vocab_sha256(vocab),
        "training": training,
        **attrs,
        "features": len(arrays["input_ids"]),
        "settings": dataclasses.asdict(s),
    }
    return arrays, attrs


def write_json(obj: Any, output: str | Path, indent: int | None = None) -> None:
    """Write JSON, renamed into place when complete."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + ("\n" if indent else ""))
    os.replace(tmp, output)


def write_h5(arrays: Mapping[str, np.ndarray], output: str | Path, attrs: Mapping[str, Any] | None = None) -> None:
    """Write arrays to HDF5, renamed into place when complete."""
    import h5py

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for k, a in arrays.items():
                f.create_dataset(k, data=a, track_times=False)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_h5(
    path: str | Path, required: tuple[str, ...] = ("input_ids", "attention_mask")
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All datasets and attributes of an HDF5 file; a one-line error if it is unreadable or lacks ``required``."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in required if k not in f]
            if missing:
                raise TaskError(f"{path}: missing dataset(s) {', '.join(missing)}; rebuild it with rule task_features")
            return {k: _read_dataset(f, k, path) for k in f}, dict(f.attrs)
    except OSError as e:  # opening, or the file's metadata (a damaged dataset is a TaskError of its own)
        raise TaskError(f"{path}: not a readable HDF5 file ({e})") from None


def features_lowercase(path: str | Path) -> bool | None:
    """Whether a feature file's text was lower-cased before WordPiece (its recorded settings):
    what a model trained on it expects of its tokenizer. ``None`` when the file does not say."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            settings = f.attrs.get("settings")
    except OSError:
        return None
    if settings is None:
        return None
    value = json.loads(settings).get("lowercase") if isinstance(settings, str) else None
    return None if value is None else bool(value)


def _read_dataset(f, name: str, path: Path) -> np.ndarray:
    """A whole dataset; a chunk that fails to decompress (bytes damaged on disk) is a one-line error."""
    try:
        return f[name][:]
    except OSError as e:
        raise TaskError(
            f"{path}: dataset {name!r} cannot be read ({' '.join(str(e).split())}); "
            "the file is corrupt: delete it and rerun to rebuild it"
        ) from None
