"""One trainer for every stage: general distillation, both task stages, teacher fine-tuning.

Plain PyTorch. The trainable part is an *objective* (see :mod:`bertdistill.objectives`): a module
holding the student (and projection) whose ``forward(batch, targets)`` returns loss terms; the
teacher, if any, runs under ``torch.inference_mode`` and only produces ``targets``.

Resumability: every ``snapshot_every`` steps, and when SIGTERM arrives (SLURM time limits,
preemption), the trainer writes model, projection, optimizer, schedule, scaler, every rank's RNG
states and the data position to ``snapshot_dir``. Running the same command again resumes from it,
bit for bit on CPU in fp32. The data order is a pure function of (seed, epoch), so the data
position is just the step count.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .settings import TrainConfig

log = logging.getLogger("bertdistill.train")

Batch = dict[str, torch.Tensor]
PAD_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------------------------
# Configuration and schedule


def compile_for_training(
    model: nn.Module, teacher_targets: Callable | None, mode: str
) -> tuple[nn.Module, Callable | None]:
    """``torch.compile`` the objective (student forward and losses; backward through AOTAutograd)
    and its ``teacher_targets`` (the teacher forward). Dynamic padding rounds lengths to multiples
    of 8, so up to max_len/8 shapes compile once each; the recompile limit is raised to match
    instead of falling back to eager."""
    import torch._dynamo

    dyn = torch._dynamo.config
    name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
    setattr(dyn, name, max(getattr(dyn, name), 64))
    mode_arg = None if mode == "default" else mode
    compiled_targets = torch.compile(teacher_targets, mode=mode_arg, dynamic=False) if teacher_targets else None
    return torch.compile(model, mode=mode_arg, dynamic=False), compiled_targets


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of update ``step`` (1-based), as the reference's LinearWarmUpScheduler.

    progress = step / total; linear: base·progress/warmup while progress < warmup, then
    base·max((progress − 1)/(warmup − 1), 0). constant: base.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    progress = step / total
    if progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    return cfg.lr * max(0.0, (progress - 1.0) / (cfg.warmup - 1.0))


# ----------------------------------------------------------------------------------------------
# Optimizers


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """Adam with decoupled weight decay and **no** bias correction (apex FusedAdam,
    ``bias_correction=False, adam_w_mode=True``, as the reference uses it):

        m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr·(m / (√v + ε) + wd·p)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params, grads, ms, vs = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
            if not params:
                continue
            # One multi-tensor kernel per operation instead of a Python loop over parameters.
            torch._foreach_lerp_(ms, grads, 1 - b1)  # m = b1*m + (1-b1)*g
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(ms, denom)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, updates, alpha=-group["lr"])


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay for all parameters except biases and LayerNorm (the reference's groups)."""
    decay, no_decay, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if ("bias" in name or "LayerNorm" in name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(module, cfg.weight_decay)
    if cfg.optimizer == "adam_nobc":
        return AdamNoBiasCorrection(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    # Fused kernels exist for CUDA and, since torch 2.4, for fp32 on CPU.
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)


# ----------------------------------------------------------------------------------------------
# Data


class BatchDataset(Protocol):
    """What the trainer reads: a length and a batch for a list of example indices."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> Batch: ...


class TensorDataset:
    """Examples held as a dict of equally long tensors (features, cached teacher logits)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors have different lengths: {lengths}")
        self.tensors = dict(tensors)
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: torch.Tensor) -> Batch:
        return {k: v[indices] for k, v in self.tensors.items()}


def trim_padding(batch: Batch, multiple: int = 8) -> Batch:
    """Cut sequence tensors to the longest real sequence, rounded up to ``multiple`` (LDDL style).

    Cached per-position teacher logits (``teacher_logits`` ``[B, 2, L]`` for QA) are cut too.
    """
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    longest = int(mask.sum(1).max())
    keep = min(mask.shape[1], -(-longest // multiple) * multiple)
    out = {}
    for k, v in batch.items():
        if k in PAD_KEYS:
            v = v[:, :keep]
        elif k == "teacher_logits" and v.dim() == 3:
            v = v[..., :keep]
        out[k] = v
    return out


def steps_per_epoch(n: int, global_batch: int, world: int) -> int:
    """Full global batches, plus a last partial one when every rank gets at least one example."""
    full, rest = divmod(n, global_batch)
    return full + (1 if rest >= world else 0)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def micro_batches(
    perm: torch.Tensor, step_in_epoch: int, global_batch: int, rank: int, world: int, accum: int
) -> list[torch.Tensor]:
    """This rank's micro-batches of one optimizer step: a contiguous slice of the epoch order,
    split evenly over ranks, then over accumulation steps (so 2 ranks × b equal 1 rank × 2b)."""
    chunk = perm[step_in_epoch * global_batch : (step_in_epoch + 1) * global_batch]
    mine = torch.tensor_split(chunk, world)[rank]
    return [m for m in torch.tensor_split(mine, accum) if len(m)]


# ----------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group when launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref.startswith("cuda")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), device


def _all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# RNG and snapshot files


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> Any:
    # Our own snapshot, written by this trainer: RNG states need numpy/python objects.
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------------------------
# The trainer


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    resumed_from: int
    selection: dict[str, Any]
    last_terms: dict[str, float]
    world_size: int = 1


@dataclass
class Best:
    """Every dev evaluation, the best one so far (higher ``metric`` is better) and, with
    ``keep="best"``, its weights (kept on the CPU; written to their own snapshot file)."""

    metric: float | None = None
    step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None

    def record(self) -> dict[str, Any]:
        """What the snapshot stores besides the weights."""
        return {"metric": self.metric, "step": self.step, "history": self.history}


@dataclass
class _Run:
    """The state of one ``fit``: what a step needs and what a snapshot saves."""

    model: nn.Module  # the objective, or its DDP / compiled wrapper
    teacher_targets: Callable | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    global_batch: int
    per_epoch: int
    total: int
    step: int = 0
    resumed_from: int = 0
    best: Best = field(default_factory=Best)
    perm_epoch: int = -1
    perm: torch.Tensor | None = None
    last_terms: dict[str, float] = field(default_factory=dict)
    # Mean loss terms and sequences/s over the steps since the last CSV row.
    window: dict[str, float] = field(default_factory=dict)
    window_steps: int = 0
    window_seqs: int = 0
    window_t: float = field(default_factory=time.time)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    flag = {"stop": False}

    def handler(signum, frame):  # noqa: ARG001
        flag["stop"] = True

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, old)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _clone_targets(obj: Any) -> Any:
    """Inference tensors cannot be saved for backward; clone the few the loss needs."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone_targets(v) for k, v in obj.items()}
    return obj


class Trainer:
    """Runs an objective for ``max_steps`` (or ``epochs``) with snapshots, logs and DDP."""

    def __init__(
        self,
        cfg: TrainConfig,
        snapshot_dir: str | Path,
        log_csv: str | Path | None = None,
        fingerprint_extra: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.snapshot_dir = Path(snapshot_dir)
        self.log_csv = Path(log_csv) if log_csv else None
        self.fingerprint = cfg.fingerprint(fingerprint_extra)
        self.on_step = on_step
        self.dist, self.device = init_distributed(cfg.device)

    def fit(
        self,
        objective: nn.Module,
        dataset: BatchDataset,
        teacher: nn.Module | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    ) -> TrainResult:
        """Train ``objective`` (in place) and return what happened.

        ``evaluate(student)`` returns metrics with a ``metric`` key (higher is better); it runs on
        rank 0 every ``eval_every`` steps and at the end. With ``keep="best"`` the best
        evaluated weights are loaded into the objective at the end.
        """
        start_time = time.time()
        # prepare: devices, wrappers, optimizer; resume from a snapshot of the same settings
        run = self._prepare(objective, dataset, teacher)
        logger = _CsvLog(self.log_csv, resume_step=run.step) if self.dist.main else None
        bar = _progress(run.total, run.step, self.dist.main)
        objective.train()
        every = self.cfg.eval_every
        with _sigterm_flag() as flag:
            while run.step < run.total:
                lr = self._step(run, objective, dataset, teacher)  # forward, backward, update
                self._log(run, lr, logger, bar)
                if evaluate is not None and every and (run.step % every == 0 or run.step == run.total):
                    self._evaluate(objective, evaluate, run)
                self._snapshot_or_stop(run, objective, flag, logger)
        # termination: a final evaluation when none ran on a schedule, then keep the best or last
        if evaluate is not None and not every:
            self._evaluate(objective, evaluate, run)
        for closable in (logger, bar):
            if closable is not None:
                closable.close()
        selection = self._select(run, objective)
        return TrainResult(
            run.step, time.time() - start_time, run.resumed_from, selection, run.last_terms, self.dist.world
        )

    # -- phases of fit ---------------------------------------------------------------------------
    def _prepare(self, objective: nn.Module, dataset: BatchDataset, teacher: nn.Module | None) -> _Run:
        """Seeds, devices, the step budget, DDP / compile wrappers, optimizer; resume if a
        snapshot of the same settings exists."""
        cfg, d, device = self.cfg, self.dist, self.device
        seed_everything(cfg.seed + d.rank)
        objective.to(device)
        if teacher is not None:
            teacher.to(device)
            teacher.train(cfg.teacher_dropout)
            for p in teacher.parameters():
                p.requires_grad_(False)
        global_batch = cfg.batch_size * cfg.grad_accum * d.world
        per_epoch = steps_per_epoch(len(dataset), global_batch, d.world)
        if per_epoch == 0:
            raise ValueError(f"{len(dataset)} examples are fewer than the {d.world} ranks")
        total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))

        model: nn.Module = objective
        if d.enabled:
            model = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        teacher_targets = getattr(objective, "teacher_targets", None)
        if cfg.compile:
            model, teacher_targets = compile_for_training(model, teacher_targets, cfg.compile)
        run = _Run(
            model=model,
            teacher_targets=teacher_targets,
            optimizer=make_optimizer(objective, cfg, device),
            scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
            amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision),
            global_batch=global_batch,
            per_epoch=per_epoch,
            total=total,
        )
        self._resume(run, objective)
        return run

    def _step(self, run: _Run, objective: nn.Module, dataset: BatchDataset, teacher: nn.Module | None) -> float:
        """One optimizer step over this rank's micro-batches; returns its learning rate."""
        cfg, d = self.cfg, self.dist
        epoch, in_epoch = divmod(run.step, run.per_epoch)
        if epoch != run.perm_epoch:
            run.perm, run.perm_epoch = epoch_permutation(len(dataset), cfg.seed, epoch), epoch
        parts = micro_batches(run.perm, in_epoch, run.global_batch, d.rank, d.world, cfg.grad_accum)
        n_local = sum(len(p) for p in parts)
        lr = lr_at(cfg, run.step + 1, run.total)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        # forward, backward
        sums: dict[str, float] = {}
        for i, idx in enumerate(parts):
            batch = dataset.batch(idx)
            if cfg.dynamic_padding:
                batch = trim_padding(batch)
            batch = _to(batch, self.device)
            with torch.autocast(self.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                targets = {}
                if run.teacher_targets is not None and (teacher is not None or "teacher_logits" in batch):
                    with torch.inference_mode():
                        targets = run.teacher_targets(teacher, batch)
                    targets = _clone_targets(targets)
                last = i == len(parts) - 1
                sync = contextlib.nullcontext() if (not d.enabled or last) else run.model.no_sync()
                with sync:
                    terms = run.model(batch, targets)
                    weight = len(idx) / n_local  # exact mean over this rank's examples
                    run.scaler.scale(terms["loss"] * weight).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        # update
        run.scaler.unscale_(run.optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.max_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        # Loss terms averaged over every example of the global batch (all ranks).
        keys = sorted(sums)
        packed = _all_reduce_sum(torch.tensor([sums[k] for k in keys] + [n_local], dtype=torch.float64), d)
        n_global = packed[-1].item()
        run.last_terms = {k: packed[j].item() / n_global for j, k in enumerate(keys)}
        for k, v in run.last_terms.items():
            run.window[k] = run.window.get(k, 0.0) + v
        run.window_steps += 1
        run.window_seqs += int(n_global)
        return lr

    def _log(self, run: _Run, lr: float, logger: _CsvLog | None, bar) -> None:
        """A train.csv row every ``log_every`` steps (means over the window) and the progress bar."""
        if run.step % self.cfg.log_every == 0 or run.step == run.total:
            elapsed = time.time() - run.window_t
            row = {
                "step": run.step,
                "epoch": (run.step - 1) // run.per_epoch,
                "lr": lr,
                **{k: v / run.window_steps for k, v in run.window.items()},
                "seq_per_s": run.window_seqs / max(elapsed, 1e-9),
            }
            if logger:
                logger.write(row)
            run.window, run.window_steps, run.window_seqs, run.window_t = {}, 0, 0, time.time()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run.last_terms['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)

    def _snapshot_or_stop(self, run: _Run, objective: nn.Module, flag: dict[str, bool], logger) -> None:
        """Snapshot every ``snapshot_every`` steps; on SIGTERM (any rank) snapshot and exit 143."""
        stop = _all_reduce_sum(torch.tensor([1.0 if flag["stop"] else 0.0]), self.dist).item() > 0
        if run.step % self.cfg.snapshot_every == 0 or stop:
            self._write_snapshot(run, objective)
        if self.on_step is not None:
            self.on_step(run.step, run.last_terms)
        if stop and run.step < run.total:
            log.warning("SIGTERM: snapshot written at step %d; rerun the same command to resume", run.step)
            if logger:
                logger.close()
            raise SystemExit(143)

    def _evaluate(self, objective: nn.Module, evaluate, run: _Run) -> None:
        best = run.best
        if self.dist.main:
            objective.eval()
            with torch.inference_mode():
                metrics = evaluate(objective.student)
            objective.train()
            best.history.append({"step": run.step, **metrics})
            if best.metric is None or metrics["metric"] > best.metric:
                best.metric, best.step = metrics["metric"], run.step
                if self.cfg.keep == "best":
                    best.weights = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
            log.info("step %d: %s", run.step, metrics)
        _barrier(self.dist)

    def _select(self, run: _Run, objective: nn.Module) -> dict[str, Any]:
        """Load the best evaluated weights (``keep="best"``) and say which step was kept."""
        best = run.best
        selection = {
            "keep": self.cfg.keep,
            "best_step": best.step,
            "best_metric": best.metric,
            "history": best.history,
            "final_step": run.step,
            "selected_step": run.step,
        }
        if self.cfg.keep == "best" and best.weights is not None:
            objective.load_state_dict(best.weights)
            selection["selected_step"] = best.step
        objective.eval()
        return selection

    # -- snapshots ------------------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        return self.snapshot_dir / "snapshot.pt"

    def _write_snapshot(self, run: _Run, objective: nn.Module) -> None:
        d, step, best = self.dist, run.step, run.best
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        atomic_save(rng_state(), self.snapshot_dir / f"rng_rank{d.rank}_step{step}.pt")
        _barrier(d)
        if d.main:
            state = {
                "fingerprint": self.fingerprint,
                "step": step,
                "world": d.world,
                "objective": objective.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": {"schedule": self.cfg.schedule, "step": step},
                "scaler": run.scaler.state_dict(),
                "best": best.record(),
            }
            best_file = self.snapshot_dir / f"best_step{best.step}.pt"
            if best.weights is not None and not best_file.exists():
                atomic_save(best.weights, best_file)
            atomic_save(state, self._snapshot_path())
            # Older RNG/best files are superseded only once the new snapshot is in place.
            for f in self.snapshot_dir.glob("rng_rank*_step*.pt"):
                if not f.name.endswith(f"_step{step}.pt"):
                    f.unlink(missing_ok=True)
            for f in self.snapshot_dir.glob("best_step*.pt"):
                if f.name != best_file.name:
                    f.unlink(missing_ok=True)
        _barrier(d)

    def _read_snapshot(self) -> dict[str, Any] | None:
        path = self._snapshot_path()
        if not path.is_file():
            return None
        state = _load(path)
        if state.get("fingerprint") != self.fingerprint or state.get("world") != self.dist.world:
            _barrier(self.dist)  # every rank has read the file before it moves
            if self.dist.main:
                stale = self.snapshot_dir.with_name(f"{self.snapshot_dir.name}.stale-{int(time.time())}")
                log.warning("snapshot %s was made with other settings; moved to %s, starting afresh", path, stale)
                shutil.move(str(self.snapshot_dir), stale)
            _barrier(self.dist)
            return None
        return state

    def _resume(self, run: _Run, objective: nn.Module) -> None:
        snap = self._read_snapshot()
        if snap is None:
            return
        objective.load_state_dict(snap["objective"])
        run.optimizer.load_state_dict(snap["optimizer"])
        run.scaler.load_state_dict(snap["scaler"])
        run.step = run.resumed_from = snap["step"]
        run.best = Best(**snap["best"])
        if run.best.step is not None and self.cfg.keep == "best":
            run.best.weights = _load(self.snapshot_dir / f"best_step{run.best.step}.pt")
        set_rng_state(_load(self.snapshot_dir / f"rng_rank{self.dist.rank}_step{run.step}.pt"))
        log.info("resumed from %s at step %d", self._snapshot_path(), run.step)

    def clear_snapshots(self) -> None:
        """Remove the snapshot folder once the stage's output is safely written."""
        _barrier(self.dist)
        if self.dist.main and self.snapshot_dir.exists():
            shutil.rmtree(self.snapshot_dir)


class _CsvLog:
    """Append-only CSV of loss terms, lr and throughput; on resume, rows past the snapshot go."""

    def __init__(self, path: Path | None, resume_step: int) -> None:
        self.path, self.file, self.writer, self.fields = path, None, None, None
        self.tb = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        if rows:
            self.fields = list(rows[0].keys())
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
        elif path.exists():
            path.unlink()
        try:  # TensorBoard only when installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(path.with_suffix("")) + "_tb")
        except Exception:  # noqa: BLE001
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self.file is None:
            new = not self.path.exists()
            self.file = open(self.path, "a", newline="")
            self.fields = self.fields or list(row.keys())
            self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
            if new:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()


def _progress(total: int, initial: int, main: bool):
    if not main:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=5)
