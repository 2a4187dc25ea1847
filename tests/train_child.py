"""A tiny distillation run used by the resume and DDP tests (run as a subprocess or under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import torch

from bertdistill.checkpoints import save_model
from bertdistill.data.stream import ShardStream
from bertdistill.model import BertConfig, BertModel
from bertdistill.objectives import BackboneLossConfig, BackboneObjective, make_projection
from bertdistill.train import TensorDataset, TrainConfig, Trainer, load_snapshot_file


class Recording:
    """A ShardStream that appends the row ids of every batch it hands out to
    ``<out>/seen_rank<r>.txt`` (one line per step), and its files to ``files_rank<r>.txt``."""

    def __init__(self, stream: ShardStream, out: Path) -> None:
        self.stream, self.out = stream, out

    def __len__(self) -> int:
        return len(self.stream)

    def describe(self):
        return self.stream.describe()

    def position(self, consumed, rank, world):
        return self.stream.position(consumed, rank, world)

    def steps(self, start_step, global_batch, accum, rank, world, pin_memory=False):
        from helpers import row_id

        files = [str(f.path) for f in self.stream.rank_files(rank, world)]
        (self.out / f"files_rank{rank}.txt").write_text("\n".join(files) + "\n")
        for parts in self.stream.steps(start_step, global_batch, accum, rank, world, pin_memory):
            ids = [row_id(row) for b in parts for row in b["input_ids"]]
            with open(self.out / f"seen_rank{rank}.txt", "a") as f:
                f.write(" ".join(map(str, ids)) + "\n")
            yield parts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--global-batch", type=int, default=None, help="train.global_batch_size")
    p.add_argument("--snapshot-every", type=int, default=3)
    p.add_argument("--block-at", type=int, default=0, help="at this step write <out>/blocked and hang")
    p.add_argument("--term-at", type=int, default=0, help="at this step send ourselves SIGTERM")
    p.add_argument("--term-group-at", type=int, default=0, help="at this step SIGTERM our process group (as SLURM)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-dynamic-padding", action="store_true")
    p.add_argument("--group-by-length", action="store_true", help="train.group_by_length")
    p.add_argument("--optimizer", default="adam_nobc")
    p.add_argument("--masking", default="faithful")
    p.add_argument("--stream", default=None, help="read HDF5 shards of this folder as a ShardStream")
    p.add_argument("--buffer", type=int, default=10, help="the stream's shuffle window")
    p.add_argument("--workers", type=int, default=1, help="the stream's background readers")
    # CPU by default: bit-identical resume and the gloo DDP comparison are CPU properties.
    p.add_argument("--device", default="cpu")
    p.add_argument("--objective", default="backbone", choices=["backbone", "classifier"])
    p.add_argument("--examples", type=int, default=40, help="classifier: examples in the data")
    p.add_argument("--sgd", action="store_true", help="plain SGD at a constant lr 1, no clipping")
    p.add_argument("--dump-steps", action="store_true", help="rank 0 saves the weights after each step")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate scripted_metric this often")
    p.add_argument("--keep", default="last")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    common = dict(
        vocab_size=60,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_dropout_prob=a.dropout,
        attention_probs_dropout_prob=a.dropout,
    )
    teacher = BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, intermediate_size=48, **common))
    student = BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, **common), add_pooling_layer=False
    )
    projection = make_projection(student.config, teacher.config, seed=0)
    g = torch.Generator().manual_seed(1)
    n, length = 40, 16
    ids = torch.randint(5, 60, (n, length), generator=g)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    data = TensorDataset({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
    if a.stream:
        data = Recording(ShardStream([a.stream], None, seed=3, shuffle_buffer=a.buffer, workers=a.workers), out)

    objective = BackboneObjective(
        student, teacher.config, projection, BackboneLossConfig(layer_map="uniform", masking=a.masking, embedding="mse")
    )
    cfg = TrainConfig(
        max_steps=a.steps,
        batch_size=a.batch,
        grad_accum=a.accum,
        global_batch_size=a.global_batch,
        lr=5e-3,
        optimizer=a.optimizer,
        snapshot_every=a.snapshot_every,
        log_every=1,
        seed=3,
        dynamic_padding=not a.no_dynamic_padding,
        group_by_length=a.group_by_length,
        device=a.device,
    )

    def on_step(step, terms):
        if step == a.block_at:
            (out / "blocked").write_text(str(step))
            time.sleep(600)
        if step == a.term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == a.term_group_at:  # every process of the job, the background reader included
            os.killpg(os.getpgrp(), signal.SIGTERM)

    if a.objective == "classifier":
        from helpers import classifier_data, tiny_classifier

        objective, teacher, data = tiny_classifier(), None, classifier_data(a.examples)
        student, projection = objective.student, None
    if a.sgd:  # a wrong gradient scale shows in an SGD step (Adam's update is scale invariant)
        import bertdistill.train

        bertdistill.train.make_optimizer = lambda module, cfg, device: torch.optim.SGD(module.parameters(), lr=1.0)
        cfg = dataclasses.replace(cfg, schedule="constant", lr=1.0, max_grad_norm=0.0)
    cfg = dataclasses.replace(cfg, eval_every=a.eval_every, keep=a.keep)

    # The step an evaluation belongs to: one past the last finished step (a resumed run starts at
    # its snapshot's step).
    snapshot = out / "snapshots" / "snapshot.pt"
    progress = {"step": load_snapshot_file(snapshot)["step"] if snapshot.is_file() else 0}

    def on_step_and_dump(step, terms):
        progress["step"] = step
        if a.dump_steps and int(os.environ.get("RANK", "0")) == 0:
            torch.save({k: v.clone() for k, v in objective.state_dict().items()}, out / f"step{step}.pt")
        on_step(step, terms)

    evaluate = None
    if a.eval_every:
        from helpers import scripted_metric

        def evaluate(model):
            step = progress["step"] + 1
            return {"metric": scripted_metric(step, model), "evaluated_step": step}

    trainer = Trainer(cfg, out / "snapshots", log_csv=out / "train.csv", on_step=on_step_and_dump)
    result = trainer.fit(objective, data, teacher=teacher, evaluate=evaluate)
    if trainer.dist.main:
        if projection is None:
            torch.save(objective.state_dict(), out / "objective.pt")
        else:
            save_model(student, out / "model", projection=projection, settings={"steps": a.steps}, overwrite=True)
        (out / "selection.json").write_text(json.dumps(result.selection))
    # What every rank ends with (under DDP all ranks should hold the same weights and selection).
    rank = trainer.dist.rank
    (out / f"selection_rank{rank}.json").write_text(json.dumps(result.selection))
    torch.save(objective.state_dict(), out / f"final_rank{rank}.pt")
    trainer.clear_snapshots()


if __name__ == "__main__":
    main()
