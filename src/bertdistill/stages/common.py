"""What the training stages share: the train-and-save skeleton and the dev evaluator."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import CheckpointError, save_model
from ..settings import TrainConfig
from ..snapshots import snapshot_dir_for


def check_positions(data_path: Path | list[Path], length: int, *models: tuple[Path, Any]) -> None:
    """Sequences of ``length`` tokens must fit every model's position embeddings: a one-line error
    naming the data and the model instead of an IndexError inside the first forward. (The Snakefile
    checks the same before any job runs when the teacher's config is known then.)"""
    for path, model in models:
        positions = model.config.max_position_embeddings
        if length > positions:
            raise CheckpointError(
                f"{data_path}: sequences of {length} tokens, but {path} has max_position_embeddings {positions}; "
                f"rebuild the data with max_seq_length <= {positions}"
            )


def train_and_save(
    objective: Any,
    data: Any,
    train: TrainConfig,
    output: Path,
    snapshot_dir: Path | None,
    *,
    record: Mapping[str, Any],
    vocab: Path,
    teacher: Any = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    after_fit: Callable[[], Mapping[str, Any]] | None = None,
    after_fit_file: str | None = None,
    inputs: Mapping[str, Path | list[Path] | None] | None = None,
    labels: Sequence[str] | None = None,
    lowercase: bool | None = None,
) -> Any:
    """The skeleton of every training stage: fit ``objective`` with resumable snapshots, then
    (rank 0) write the student, its projection, ``train.csv`` and ``distill.json`` to
    ``output`` (renamed into place only now, so the output appears for a finished stage).

    ``record`` is what the stage adds to ``distill.json`` (and to the snapshot fingerprint: a
    snapshot made with another record is not resumed); ``inputs`` are the files and folders the
    stage reads, hashed by content for the same purpose (an input rebuilt upstream since the
    snapshot was taken means starting afresh). ``after_fit()`` runs once training is
    done; its result joins the record and, with ``after_fit_file``, is written as that JSON file
    into the output too. ``labels`` and ``lowercase`` go to :func:`~bertdistill.checkpoints.save_model`
    (the class names and the tokenizer's lower-casing of the saved folder). The snapshots stay:
    the caller removes them once the output is recorded (:func:`~bertdistill.snapshots.clear_finished_snapshots`).
    Returns the :class:`~bertdistill.train.TrainResult`.
    """
    from ..train import Trainer

    snapshots = snapshot_dir_for(output, snapshot_dir)
    trainer = Trainer(
        train,
        snapshots,
        log_csv=snapshots / "train.csv",
        fingerprint_extra=record,
        inputs=inputs,
        name=str(record.get("stage", output.name)),
    )
    result = trainer.fit(objective, data, teacher=teacher, evaluate=evaluate)
    extra = dict(after_fit()) if after_fit else {}
    if trainer.dist.main:
        files = {"train.csv": snapshots / "train.csv"}
        if after_fit_file:
            (snapshots / after_fit_file).write_text(json.dumps(extra, indent=2) + "\n")
            files[after_fit_file] = snapshots / after_fit_file
        settings = {
            **record,
            **extra,
            "train": dataclasses.asdict(train),
            "selection": result.selection,
            "steps": result.steps,
            "resumed_from_step": result.resumed_from,
            "world_size": result.world_size,
            "skipped_steps": result.skipped_steps,
            "input_sha256": trainer.inputs,
            "wall_s": round(result.wall_s, 3),
            "final_loss_terms": result.last_terms,
        }
        save_model(
            objective.student,
            output,
            vocab=vocab,
            projection=objective.projection,
            settings=settings,
            extra_files=files,
            overwrite=True,
            labels=labels,
            lowercase=lowercase,
        )
    return result


def dev_evaluator(
    task: Any, dev_features: Path, dev: Path, vocab: Path, batch_size: int, n_best: int, max_answer_length: int
) -> Callable[[Any], dict[str, float]]:
    """``evaluate(model)`` for the trainer: the task's dev metrics plus ``metric`` (the one that
    selects checkpoints)."""
    from ..tasks import read_h5

    arrays, _ = read_h5(dev_features)

    def evaluate(model: Any) -> dict[str, float]:
        metrics, _ = task.evaluate(model, arrays, dev, vocab, batch_size, n_best, max_answer_length)
        return {"metric": metrics[task.metric], **metrics}

    return evaluate
