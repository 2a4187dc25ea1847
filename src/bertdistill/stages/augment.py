"""TinyBERT augmentation: an MLM for the candidates (adapt_mlm), a scatter over shards, a gather."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..checkpoints import VOCAB_NAME, load_model
from ..settings import AugmentSettings, TrainConfig
from ..tasks import get_task, write_json
from .common import train_and_save
from .registry import TaskName, stage

HELDOUT_BATCH = 64  # sequences per batch when scoring held-out masked tokens


@stage("adapt-mlm", rules=("adapt_mlm",), distributed=True)
def adapt_mlm(
    teacher: Path,
    shards: list[Path],
    heldout: list[Path],
    output: Path,
    train: TrainConfig,
    heldout_examples: int,
    snapshot_dir: Path | None = None,
) -> dict[str, Any]:
    """Continue masked-LM training of a teacher without an MLM head (a new head, decoder tied to the
    word embeddings) on statically masked shards, for a bounded budget; report masked-token
    accuracy on held-out shards before and after (``mlm_accuracy.json``). Its MLM proposes the
    augmentation candidates.

    Args:
        teacher: the base teacher's folder
        shards: training shards (HDF5)
        heldout: held-out shards, never trained on
        output: the MLM's folder
        train: training settings
        heldout_examples: held-out sequences scored before and after
        snapshot_dir: resumable snapshots (default: .{output}.snapshots next to the output)
    """
    import torch

    from ..data.pretraining import load_shards
    from ..data.stream import ShardStream
    from ..inference import mlm_accuracy
    from ..objectives import MaskedLMObjective

    torch.manual_seed(train.seed)
    model = load_model(teacher, head="mlm", init_head=True)
    vocab = teacher / VOCAB_NAME
    # Training shards stream as in general distillation (phase 1's, Wikipedia-size with a real
    # corpus); the held-out shard is one file, scored in memory.
    data = ShardStream(shards, vocab, seed=train.seed)
    held = load_shards(heldout, vocab_file=vocab)
    before = mlm_accuracy(model, held, HELDOUT_BATCH, heldout_examples)

    metrics: dict[str, Any] = {"heldout_before": before}

    def after() -> dict[str, Any]:
        metrics["heldout_after"] = mlm_accuracy(model, held, HELDOUT_BATCH, heldout_examples)
        return metrics

    record = {"stage": "adapt_mlm", "teacher": str(teacher), "examples": len(data), "reader": data.describe()}
    objective = MaskedLMObjective(model)
    train_and_save(
        objective,
        data,
        train,
        output,
        snapshot_dir,
        record=record,
        vocab=vocab,
        after_fit=after,
        after_fit_file="mlm_accuracy.json",
        inputs={"teacher": teacher, "shards": list(shards)},
    )
    return metrics


@stage("augment", rules=("augment_shard",))
def augment_shard(
    task: TaskName,
    train: Path,
    mlm: Path,
    vectors: Path,
    output: Path,
    shard_index: int,
    num_shards: int,
    settings: AugmentSettings,
    device: str = "auto",
) -> dict[str, int]:
    """Augment texts ``shard_index, shard_index + num_shards, ...`` of a task's training data; the
    part file (JSON) appears only when the shard is complete (a killed shard simply reruns).

    Args:
        task: the task
        train: training data (SQuAD v1.1 JSON or GLUE TSV)
        mlm: model folder with an MLM head and vocab.txt
        vectors: word vectors: .kv from the vectors stage, or a GloVe/word2vec text file
        output: the part file
        shard_index: which shard, 0-based
        num_shards: shards in all
        settings: rounds, candidates, probability, seed
        device: auto (CUDA when available), cpu or cuda[:N]
    """
    import torch

    from ..augment import Augmentor, WordVectors
    from ..checkpoints import read_vocab
    from ..tokenization import load_tokenizer

    t = get_task(task)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    augmentor = Augmentor(
        load_model(mlm, head="mlm"),
        load_tokenizer(mlm / VOCAB_NAME),
        read_vocab(mlm / VOCAB_NAME),
        WordVectors.load(vectors, settings.vector_vocab),
        settings,
        device=dev,
    )
    part, stats, samples = t.augment(augmentor, train, shard_index, num_shards, settings)
    write_json(
        {
            "task": task,
            "shard": shard_index,
            "num_shards": num_shards,
            "stats": dataclasses.asdict(stats),
            "samples": samples,
            **part,
        },
        output,
    )
    return dataclasses.asdict(stats)


@stage("augment-gather", rules=("augment_gather",))
def augment_gather(
    task: TaskName, train: Path, parts: list[Path], output: Path, stats_output: Path, samples_output: Path
) -> dict[str, int]:
    """Gather shard parts into the augmented training file (the original's format: originals
    plus variants), a stats JSON (texts, eligible words, MLM vs vector candidates, augmented
    examples) and a file of original/augmented pairs for people to read.

    Args:
        task: the task
        train: the original training data
        parts: the augment stage's part files
        output: the augmented training file
        stats_output: JSON of counts
        samples_output: JSON of original/augmented pairs
    """
    from ..augment import AugmentStats

    loaded = [json.loads(Path(p).read_text()) for p in parts]
    total = AugmentStats()
    for part in loaded:
        total.add(AugmentStats(**part["stats"]))
    get_task(task).gather(train, loaded, output)
    stats = dataclasses.asdict(total)
    write_json(stats, stats_output)
    samples = [s for part in loaded for s in part["samples"]][:10]
    Path(samples_output).write_text(json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
    return stats
