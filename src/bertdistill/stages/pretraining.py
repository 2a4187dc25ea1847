"""Pre-training data and general distillation: corpus -> shards -> phase 1 -> phase 2."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoints import VOCAB_NAME, CheckpointError, check_same_vocab, load_model, vocab_file
from ..settings import BackboneLossConfig, ReaderSettings, ShardSettings, TrainConfig
from .assets import resolve_sources
from .common import check_positions, train_and_save
from .registry import describe, stage


@stage("corpus", rules=("corpus",))
def corpus(
    sources: list[Mapping[str, Any]],
    output: list[Path],
    stats_output: Path,
    punkt_train_chars: int,
    processes: int = 1,
    exclude: list[Path] | None = None,
) -> dict[str, int]:
    """Corpus sources (text files, folders, Wikipedia dumps) -> text shards of one sentence per
    line, documents separated by blank lines (nltk Punkt trained on the corpus itself), streamed:
    document k goes to text shard k mod N.

    Args:
        sources: each {path | url+sha256 | package+subdir, format: text|wiki, min_chars}; a bare path is {path}
        output: the text shards (one file, or several)
        stats_output: JSON file of document, sentence and word counts
        punkt_train_chars: characters of the corpus the sentence splitter learns from
        processes: sentence-splitting processes (a Snakemake job passes its threads)
        exclude: files of document sha256 digests to leave out (held-out task articles)
    """
    from ..data.corpus import prepare_corpus

    return prepare_corpus(
        resolve_sources(sources),
        output,
        stats_output,
        punkt_train_chars=punkt_train_chars,
        processes=processes,
        exclude=exclude or (),
    )


@stage("shards", rules=("pretraining_shard",))
def shard(
    sentences: Path, vocab: Path, output: Path, shard_index: int, num_shards: int, seed: int, settings: ShardSettings
) -> int:
    """Build one pre-training shard (HDF5, NVIDIA's schema) from its own text shard, seeded from
    (seed, shard_index); random next sentences come from the same text shard. Returns its number
    of instances.

    Args:
        sentences: the corpus stage's text shard number ``shard_index``
        vocab: vocab.txt, or a model folder holding one
        output: the HDF5 shard
        shard_index: which shard, 0-based
        num_shards: shards in all
        seed: random seed of pairing and masking
        settings: sequence length, masking and duplication
    """
    from ..data.pretraining import make_shard

    return make_shard(sentences, vocab_file(vocab), output, shard_index, num_shards, seed, settings)


@stage("general", rules=("general_phase1", "general_phase2"), distributed=True)
def general_distill(
    teacher: Path,
    shards: list[Path],
    output: Path,
    train: TrainConfig,
    losses: BackboneLossConfig,
    phase: str,
    student: Mapping[str, Any] | None = None,
    init: Path | None = None,
    snapshot_dir: Path | None = None,
    reader: ReaderSettings | None = None,
) -> Path:
    """General distillation on pre-training shards: phase 1 builds the student from ``student``,
    phase 2 continues from ``init`` (the phase-1 folder, projection included).

    Phase 1's student starts from N(0, 0.02) (TinyBERT) or, with
    ``student.init_from_teacher_layers``, from the teacher's embeddings and those layers.
    Writes the student, its projection, ``distill.json`` and ``train.csv`` to ``output`` once
    training completes.

    Args:
        teacher: the teacher's model folder (with vocab.txt)
        shards: HDF5 shards, LDDL Parquet files or folders of them
        output: the student's folder
        train: training settings
        losses: which backbone losses, layer map and masking
        phase: name recorded in distill.json (phase1, phase2)
        student: phase 1: the student's BERT config fields (vocabulary and positions come from the teacher)
        init: phase 2: the folder to start from (phase 1's output)
        snapshot_dir: resumable snapshots (default: .{output}.snapshots next to the output)
        reader: shuffle window and prefetching of the shard stream (each rank reads its own files)
    """
    import torch

    from ..checkpoints import init_from_teacher, load_projection
    from ..data.stream import ShardStream
    from ..model import BertConfig, BertModel
    from ..objectives import BackboneObjective, make_projection

    vocab = teacher / VOCAB_NAME
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: missing; the teacher folder needs its vocab.txt")
    if (student is None) == (init is None):
        raise CheckpointError(f"{output}: give exactly one of student (phase 1) and init (phase 2)")
    teacher_model = load_model(teacher)
    teacher_model.pooler = None  # not used by the backbone losses
    tcfg = teacher_model.config
    if init is not None:
        check_same_vocab(init, teacher)
        student_model = load_model(init)
        student_model.pooler = None
        projection = load_projection(init)
        if student_model.config.vocab_size != tcfg.vocab_size:
            raise CheckpointError(
                f"{init}: student vocab_size {student_model.config.vocab_size} differs from the teacher's "
                f"{tcfg.vocab_size} ({teacher}); student and teacher must share one vocabulary"
            )
    else:
        spec = dict(student)
        init_layers = spec.pop("init_from_teacher_layers", None)
        inherited = (
            "vocab_size",
            "max_position_embeddings",
            "type_vocab_size",
            "hidden_act",
            "layer_norm_eps",
            "pad_token_id",
        )
        scfg = BertConfig.from_dict({**{k: getattr(tcfg, k) for k in inherited}, **spec})
        if scfg.vocab_size != tcfg.vocab_size:
            raise CheckpointError(
                f"{vocab}: the teacher has {tcfg.vocab_size} tokens but the student config asks for "
                f"{scfg.vocab_size}; leave student.vocab_size unset"
            )
        torch.manual_seed(train.seed)
        student_model = BertModel(scfg, add_pooling_layer=False)
        if init_layers:
            init_from_teacher(student_model, teacher_model, list(init_layers), source=teacher)
        projection = make_projection(scfg, tcfg, seed=train.seed)
    reader = reader or ReaderSettings()
    data = ShardStream(shards, vocab, seed=train.seed, shuffle_buffer=reader.shuffle_buffer, workers=reader.workers)
    check_positions(shards, data.max_seq_length, (teacher, teacher_model))
    objective = BackboneObjective(student_model, tcfg, projection, losses)
    record = {
        "stage": phase,
        "teacher": str(teacher),
        "init": str(init),
        "student": dict(student or {}),
        "losses": describe(losses),
        "examples": len(data),
        "shards": [str(s) for s in shards],
        "reader": data.describe(),
    }
    train_and_save(
        objective,
        data,
        train,
        output,
        snapshot_dir,
        record=record,
        vocab=vocab,
        teacher=teacher_model,
        inputs={"teacher": teacher, "init": init, "shards": list(shards)},
    )
    return output
