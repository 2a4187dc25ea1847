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
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("bertdistill.train")

Batch = dict[str, torch.Tensor]
PAD_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Settings of one training stage. Defaults follow the reference recipe (recipe.md §4.5)."""

    max_steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    schedule: str = "linear"  # linear (warm-up then decay to 0) | constant
    warmup: float = 0.1  # fraction of max_steps
    optimizer: str = "adamw"  # adamw | adam_nobc (apex FusedAdam, bias_correction=False, as the reference)
    weight_decay: float = 0.01  # not applied to bias and LayerNorm parameters
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    seed: int = 1
    teacher_dropout: bool = True  # the reference never puts its teacher in eval mode
    dynamic_padding: bool = True  # trim each batch to its longest sequence, rounded up to 8
    snapshot_every: int = 1000
    log_every: int = 50
    eval_every: int | None = None
    keep: str = "last"  # last | best (by the evaluation metric, higher is better)
    device: str = "auto"
    # torch.compile mode for the objective and the teacher (default | reduce-overhead |
    # max-autotune), None = eager. On a GPU a distillation step of a small student is bound by
    # kernel launches; reduce-overhead replays CUDA graphs. Each padded length compiles once.
    compile: str | None = None

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps and epochs")
        choices = {"schedule": ("linear", "constant"), "optimizer": ("adamw", "adam_nobc"),
                   "precision": ("fp32", "bf16", "fp16"), "keep": ("last", "best"),
                   "compile": (None, "default", "reduce-overhead", "max-autotune")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def fingerprint(self, extra: Mapping[str, Any] | None = None) -> str:
        """Hash of everything that changes the result (not logging/snapshot cadence or device)."""
        d = dataclasses.asdict(self)
        for k in ("snapshot_every", "log_every", "device", "compile"):
            d.pop(k)
        blob = json.dumps({"train": d, "extra": dict(extra or {})}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compile_for_training(model: nn.Module, teacher_targets: Callable | None,
                         mode: str) -> tuple[nn.Module, Callable | None]:
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


def micro_batches(perm: torch.Tensor, step_in_epoch: int, global_batch: int, rank: int, world: int, accum: int) -> list[torch.Tensor]:
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


class _StopRequested(Exception):
    pass


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

    # -- snapshots ------------------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        return self.snapshot_dir / "snapshot.pt"

    def _write_snapshot(self, step: int, objective: nn.Module, optimizer, scaler, best: dict[str, Any]) -> None:
        d = self.dist
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        atomic_save(rng_state(), self.snapshot_dir / f"rng_rank{d.rank}_step{step}.pt")
        _barrier(d)
        if d.main:
            state = {
                "fingerprint": self.fingerprint,
                "step": step,
                "world": d.world,
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"schedule": self.cfg.schedule, "step": step},
                "scaler": scaler.state_dict(),
                "best": {k: v for k, v in best.items() if k != "state"},
            }
            best_file = self.snapshot_dir / f"best_step{best.get('step')}.pt"
            if best.get("state") is not None and not best_file.exists():
                atomic_save(best["state"], best_file)
            atomic_save(state, self._snapshot_path())
            # Older RNG/best files are superseded only once the new snapshot is in place.
            for f in self.snapshot_dir.glob("rng_rank*_step*.pt"):
                if not f.name.endswith(f"_step{step}.pt"):
                    f.unlink(missing_ok=True)
            for f in self.snapshot_dir.glob("best_step*.pt"):
                if f.name != f"best_step{best.get('step')}.pt":
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

    def clear_snapshots(self) -> None:
        """Remove the snapshot folder once the stage's output is safely written."""
        _barrier(self.dist)
        if self.dist.main and self.snapshot_dir.exists():
            shutil.rmtree(self.snapshot_dir)

    # -- main loop ------------------------------------------------------------------------------
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
        cfg, d, device = self.cfg, self.dist, self.device
        start_time = time.time()
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
        optimizer = make_optimizer(objective, cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

        step, best = 0, {"metric": None, "step": None, "state": None, "history": []}
        snap = self._read_snapshot()
        if snap is not None:
            objective.load_state_dict(snap["objective"])
            optimizer.load_state_dict(snap["optimizer"])
            scaler.load_state_dict(snap["scaler"])
            step = snap["step"]
            best.update(snap["best"])
            if best.get("step") is not None and cfg.keep == "best":
                best["state"] = _load(self.snapshot_dir / f"best_step{best['step']}.pt")
            set_rng_state(_load(self.snapshot_dir / f"rng_rank{d.rank}_step{step}.pt"))
            log.info("resumed from %s at step %d", self._snapshot_path(), step)
        resumed_from = step

        logger = _CsvLog(self.log_csv, resume_step=step) if d.main else None
        bar = _progress(total, step, d.main)
        objective.train()
        perm_epoch, perm = -1, None
        last_terms: dict[str, float] = {}
        window: dict[str, float] = {}
        window_n, window_seqs, window_t = 0, 0, time.time()

        with _sigterm_flag() as flag:
            while step < total:
                epoch, in_epoch = divmod(step, per_epoch)
                if epoch != perm_epoch:
                    perm, perm_epoch = epoch_permutation(len(dataset), cfg.seed, epoch), epoch
                parts = micro_batches(perm, in_epoch, global_batch, d.rank, d.world, cfg.grad_accum)
                n_local = sum(len(p) for p in parts)
                lr = lr_at(cfg, step + 1, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                sums: dict[str, float] = {}
                for i, idx in enumerate(parts):
                    batch = dataset.batch(idx)
                    if cfg.dynamic_padding:
                        batch = trim_padding(batch)
                    batch = _to(batch, device)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        if hasattr(objective, "teacher_targets") and (teacher is not None or "teacher_logits" in batch):
                            with torch.inference_mode():
                                targets = teacher_targets(teacher, batch)
                            targets = _clone_targets(targets)
                        else:
                            targets = {}
                        sync = contextlib.nullcontext() if (not d.enabled or i == len(parts) - 1) else model.no_sync()
                        with sync:
                            terms = model(batch, targets)
                            weight = len(idx) / n_local  # exact mean over this rank's examples
                            scaler.scale(terms["loss"] * weight).backward()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
                scaler.unscale_(optimizer)
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                # Loss terms averaged over every example of the global batch (all ranks).
                keys = sorted(sums)
                packed = torch.tensor([sums[k] for k in keys] + [n_local], dtype=torch.float64)
                packed = _all_reduce_sum(packed, d)
                n_global = packed[-1].item()
                last_terms = {k: packed[j].item() / n_global for j, k in enumerate(keys)}
                for k, v in last_terms.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                window_seqs += int(n_global)

                if step % cfg.log_every == 0 or step == total:
                    elapsed = time.time() - window_t
                    row = {"step": step, "epoch": epoch, "lr": lr,
                           **{k: v / window_n for k, v in window.items()},
                           "seq_per_s": window_seqs / max(elapsed, 1e-9)}
                    if logger:
                        logger.write(row)
                    window, window_n, window_seqs, window_t = {}, 0, 0, time.time()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_terms['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)

                if evaluate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
                    self._evaluate(objective, evaluate, step, best)

                stop = torch.tensor([1.0 if flag["stop"] else 0.0])
                stop = _all_reduce_sum(stop, d)
                if step % cfg.snapshot_every == 0 or stop.item() > 0:
                    self._write_snapshot(step, objective, optimizer, scaler, best)
                if self.on_step is not None:
                    self.on_step(step, last_terms)
                if stop.item() > 0 and step < total:
                    log.warning("SIGTERM: snapshot written at step %d; rerun the same command to resume", step)
                    if logger:
                        logger.close()
                    raise SystemExit(143)

        if evaluate is not None and not cfg.eval_every:
            self._evaluate(objective, evaluate, step, best)
        if logger:
            logger.close()
        if bar is not None:
            bar.close()
        selection = {"keep": cfg.keep, "best_step": best["step"], "best_metric": best["metric"],
                     "history": best["history"], "final_step": step}
        if cfg.keep == "best" and best.get("state") is not None:
            objective.load_state_dict(best["state"])
            selection["selected_step"] = best["step"]
        else:
            selection["selected_step"] = step
        objective.eval()
        return TrainResult(step, time.time() - start_time, resumed_from, selection, last_terms, d.world)

    def _evaluate(self, objective: nn.Module, evaluate, step: int, best: dict[str, Any]) -> None:
        if self.dist.main:
            objective.eval()
            with torch.inference_mode():
                metrics = evaluate(objective.student)
            objective.train()
            best["history"].append({"step": step, **metrics})
            if best["metric"] is None or metrics["metric"] > best["metric"]:
                best["metric"], best["step"] = metrics["metric"], step
                if self.cfg.keep == "best":
                    best["state"] = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
            log.info("step %d: %s", step, metrics)
        _barrier(self.dist)


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
