"""Task-stage training steps with and without ``train.group_by_length``, on a finished run's data.

For each task: the training features of a finished run (``results/{task}/features/train.hdf5``),
the task's final student (``results/{task}_final``, its head included) and the hard-label
objective (the no-distillation baseline's and teacher fine-tuning's). Both sides run the real
trainer (``Trainer.fit``, dynamic padding on, batch 32, fp32) for ``--steps`` steps from the same
weights; only ``group_by_length`` differs. The first steps of an epoch are a random sample of it,
so their padding is the epoch's (both ratios are printed: tokens over the timed steps and over
the whole epoch).

Method: each side is first warmed up (2 untimed steps); then ``--rounds`` rounds time each side
once, in an order that reverses every round, so neither always goes first. Medians, min/max and
the per-round ratios are printed.

The timed fits include the trainer's start-up and its final snapshot (a fraction of a second
against 16 steps of seconds each), which pulls the ratio slightly towards 1.

Prints one JSON object: per task, plain_s and grouped_s (medians of the timed fits), ratio
(plain / grouped), padded tokens per side and their ratio, and the settings and machine.

``--finetune-seeds 1 2 3`` measures the metric instead: the task's teacher fine-tuning (the stage
function ``finetune_teacher`` with ``config/config.yaml``'s settings, from the base teacher in
``resources/teachers/base``, run from the workflow's folder) once per seed with random batches
and once grouped, in alternating order; prints each seed's dev metric for both.

``--student-seeds 2 3`` measures the student's metric: the task's two student stages (the stage
functions ``task_backbone`` and ``task_prediction`` with ``config/config.yaml``'s settings, from
the finished run's general student, teacher and cached teacher logits) once per seed with random
batches and once grouped, in alternating order, both stages grouped or neither; the prediction
student (the stage's kept checkpoint, as ``task_final`` reports it) is scored on dev and, where the
task has one, the held-out test split. The teacher is whatever the results folder holds: the run
records whether its fine-tuning grouped batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _workflow import split_paths, teacher_dir, workflow_config  # noqa: E402

HEADS = {"sst2": "classification", "squad": "qa"}


def padded_tokens(lengths: torch.Tensor, order: torch.Tensor, batch: int, steps: int | None = None) -> int:
    """Tokens the trainer computes: each batch cut to its longest row, rounded up to 8."""
    cut = order.split(batch)[:steps]
    return sum(-(-int(lengths[b].max()) // 8) * 8 * len(b) for b in cut)


def fit(start: torch.nn.Module, data, grouped: bool, steps: int, batch: int, tmp: Path) -> float:
    """Seconds for ``steps`` hard-label training steps from a copy of ``start``."""
    from bertdistill.objectives import SupervisedObjective
    from bertdistill.train import TrainConfig, Trainer

    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        lr=1e-4,
        group_by_length=grouped,
        snapshot_every=10**6,
        log_every=10**6,
        device="cpu",
    )
    objective = SupervisedObjective(copy.deepcopy(start))
    t = time.perf_counter()
    Trainer(cfg, tempfile.mkdtemp(dir=tmp)).fit(objective, data)
    return time.perf_counter() - t


def finetune_seeds(results: Path, task: str, seeds: list[int]) -> dict[str, object]:
    """Dev metric of the task's teacher fine-tuning per seed, random batches against grouped."""
    from bertdistill.settings import TrainConfig
    from bertdistill.stages.tasks import finetune_teacher

    t = workflow_config()["tasks"][task]
    features = results / task / "features" / ("train_original.hdf5" if t["augment"]["enabled"] else "train.hdf5")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for grouped in (False, True) if seed % 2 else (True, False):
                train = TrainConfig(**{**t["finetune"]["train"], "seed": seed, "group_by_length": grouped})
                start = time.perf_counter()
                r = finetune_teacher(
                    task=task,
                    teacher=Path("resources/teachers/base"),
                    features=features,
                    dev_features=results / task / "features/dev.hdf5",
                    dev=split_paths(results, task, t)["dev"],
                    output=Path(tmp) / f"{seed}-{grouped}",
                    train=train,
                    eval_batch_size=t["eval_batch_size"],
                    n_best=t["n_best"],
                    max_answer_length=t["max_answer_length"],
                    snapshot_dir=Path(tmp) / f"snapshots-{seed}-{grouped}",
                )
                metric = r["best_metric"]  # the selection: best dev metric
                rows.append(
                    {
                        "seed": seed,
                        "grouped": grouped,
                        "dev": round(metric, 2),
                        "s": round(time.perf_counter() - start, 1),
                    }
                )
    mean = {g: statistics.mean(r["dev"] for r in rows if r["grouped"] == g) for g in (False, True)}
    return {"runs": rows, "plain_mean": round(mean[False], 2), "grouped_mean": round(mean[True], 2)}


def _score(task: str, model: torch.nn.Module, features: Path, data: Path, teacher: Path, t: dict) -> dict[str, float]:
    """A split's metrics of ``model``, by the evaluation the prediction stage and task_final use."""
    from bertdistill.stages.common import dev_evaluator
    from bertdistill.tasks import get_task

    n_best, max_answer_length = t["n_best"], t["max_answer_length"]
    vocab = teacher / "vocab.txt"
    evaluate = dev_evaluator(get_task(task), features, data, vocab, t["eval_batch_size"], n_best, max_answer_length)
    return {k: round(v, 2) for k, v in evaluate(model).items() if k != "metric"}


def student_seeds(results: Path, task: str, seeds: list[int]) -> dict[str, object]:
    """The prediction student's dev (and test) metrics per seed, both student stages on random
    batches against both grouped, from the run's teacher and general student."""
    from bertdistill.checkpoints import load_model
    from bertdistill.stages.tasks import task_backbone, task_prediction

    t = workflow_config()["tasks"][task]
    teacher = teacher_dir(results, task, t)
    teacher_record = json.loads((teacher / "distill.json").read_text()) if (teacher / "distill.json").exists() else {}
    data = split_paths(results, task, t)
    logits = results / task / "teacher_logits.hdf5"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for grouped in (False, True) if seed % 2 else (True, False):
                start = time.perf_counter()
                out = Path(tmp) / f"{seed}-{grouped}"
                backbone = task_backbone(
                    task=task,
                    teacher=teacher,
                    init=results / "general" / t["init"],
                    features=results / task / "features/train.hdf5",
                    output=out / "backbone",
                    train={**t["backbone"]["train"], "seed": seed, "group_by_length": grouped},
                    losses=t["backbone"]["losses"],
                )
                student = task_prediction(
                    task=task,
                    teacher=teacher,
                    backbone=backbone,
                    features=results / task / "features/train.hdf5",
                    dev_features=results / task / "features/dev.hdf5",
                    dev=data["dev"],
                    output=out / "prediction",
                    train={**t["prediction"]["train"], "seed": seed, "group_by_length": grouped},
                    temperature=t["prediction"]["temperature"],
                    eval_batch_size=t["eval_batch_size"],
                    n_best=t["n_best"],
                    max_answer_length=t["max_answer_length"],
                    teacher_logits=logits if t["prediction"]["cached_teacher_logits"] else None,
                )
                seconds = time.perf_counter() - start
                model = load_model(student, head=HEADS[task])
                rows.append(
                    {"seed": seed, "grouped": grouped, "s": round(seconds, 1)}
                    | {
                        split: _score(task, model, results / task / "features" / f"{split}.hdf5", path, teacher, t)
                        for split, path in data.items()
                    }
                )
    mean = {
        f"{'grouped' if g else 'plain'}_mean_{split}": {
            k: round(statistics.mean(r[split][k] for r in rows if r["grouped"] == g), 2) for k in rows[0][split]
        }
        for g in (False, True)
        for split in data
    }
    teacher_grouped = teacher_record.get("train", {}).get("group_by_length")
    return {"teacher": str(teacher), "teacher_grouped": teacher_grouped, "runs": rows, **mean}


def main() -> None:
    from bertdistill.benchmark import machine_info
    from bertdistill.checkpoints import load_model
    from bertdistill.stages.tasks import _task_dataset
    from bertdistill.train import TrainConfig, epoch_permutation

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results folder")
    p.add_argument("--tasks", nargs="+", default=["sst2", "squad"], choices=sorted(HEADS))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--finetune-seeds", type=int, nargs="+", help="measure the teacher fine-tuning's dev metric instead")
    p.add_argument("--student-seeds", type=int, nargs="+", help="measure the student stages' dev/test metric instead")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    seeds, study = (a.student_seeds, student_seeds) if a.student_seeds else (a.finetune_seeds, finetune_seeds)
    if seeds:  # a metric study instead of the timing
        runs = {t: study(a.results, t, seeds) for t in a.tasks}
        print(json.dumps(runs | {"settings": vars(a) | {"results": str(a.results)}}, default=str))
        return

    out: dict[str, object] = {"settings": vars(a) | {"results": str(a.results)}, "machine": machine_info()}
    for task in a.tasks:
        data = _task_dataset(
            a.results / task / "features/train.hdf5", keys=("labels", "start_positions", "end_positions")
        )
        start = load_model(a.results / f"{task}_final", head=HEADS[task])
        lengths = data.lengths()

        times: dict[bool, list[float]] = {False: [], True: []}
        with tempfile.TemporaryDirectory() as tmp:
            for grouped in (False, True):
                fit(start, data, grouped, 2, a.batch, Path(tmp))  # warm-up
            for r in range(a.rounds):
                for grouped in (False, True) if r % 2 == 0 else (True, False):
                    times[grouped].append(fit(start, data, grouped, a.steps, a.batch, Path(tmp)))
        seed = TrainConfig(epochs=1).seed
        plain_order = epoch_permutation(len(data), seed, 0)
        grouped_order = epoch_permutation(len(data), seed, 0, lengths, a.batch)
        tokens = {
            "plain_steps": padded_tokens(lengths, plain_order, a.batch, a.steps),
            "grouped_steps": padded_tokens(lengths, grouped_order, a.batch, a.steps),
            "plain_epoch": padded_tokens(lengths, plain_order, a.batch),
            "grouped_epoch": padded_tokens(lengths, grouped_order, a.batch),
            "real": int(lengths.sum()),
        }
        plain_s, grouped_s = statistics.median(times[False]), statistics.median(times[True])
        out[task] = {
            "examples": len(data),
            "mean_length": round(float(lengths.float().mean()), 1),
            "max_length": int(data.tensors["attention_mask"].shape[1]),
            "plain_s": round(plain_s, 2),
            "grouped_s": round(grouped_s, 2),
            "ratio": round(plain_s / grouped_s, 3),
            "round_ratios": [round(x / y, 3) for x, y in zip(times[False], times[True], strict=True)],
            "plain_all_s": [round(x, 2) for x in times[False]],
            "grouped_all_s": [round(x, 2) for x in times[True]],
            "padded_tokens": tokens,
            "token_ratio_steps": round(tokens["grouped_steps"] / tokens["plain_steps"], 3),
            "token_ratio_epoch": round(tokens["grouped_epoch"] / tokens["plain_epoch"], 3),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
