"""One trainer for every stage: general distillation, both task stages, teacher fine-tuning.

Plain PyTorch. The trainable part is an *objective* (see :mod:`bertdistill.objectives`): a module
holding the student (and projection) whose ``forward(batch, targets)`` returns loss terms; the
teacher, if any, runs under ``torch.inference_mode`` and only produces ``targets``.

Resumability: every ``snapshot_every`` steps, and when SIGTERM arrives (SLURM time limits,
preemption), the trainer writes model, projection, optimizer, schedule, scaler, every rank's RNG
states and the data position to ``snapshot_dir``; and once more after the last step, so a finished
run whose output is lost before it is recorded (a kill in the job's last seconds) costs no training.
The caller removes the folder once the output is recorded. Running the same command again resumes from it,
bit for bit on CPU in fp32. The data order is a pure function of (seed, epoch) (and of the
examples' lengths and the global batch with ``group_by_length``), or for a
:class:`BatchStream` (pre-training shards read as a stream) of (seed, rank, world), so the data
position follows from the step count; streams also record it in the snapshot. A snapshot is
resumed only when its settings and the content of every input (``inputs``: sha256 of the files)
are those of the new run, and it is read with ``torch.load(weights_only=True)``: a snapshot file is data, never code.

Divergence: a non-finite loss or gradient stops training before the update is applied, with an
error naming the stage, the step and the last good snapshot; in fp16 the gradient scaler skips
overflow steps (and lowers its scale) up to ``max_skipped_steps`` in a row.
"""

from __future__ import annotations

import contextlib
import csv
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .logs import progress
from .settings import SettingsError, TrainConfig

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


class BatchStream(Protocol):
    """What the trainer reads from a stream: a length (sequences per epoch, all ranks) and, per
    optimizer step from ``start_step`` on, this rank's micro-batches. The stream is a pure
    function of its settings, rank and world, so resuming at a step resumes the data exactly."""

    def __len__(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def position(self, consumed: int, rank: int, world: int) -> dict[str, Any]: ...

    def steps(
        self, start_step: int, global_batch: int, accum: int, rank: int, world: int, pin_memory: bool = False
    ) -> Iterator[list[Batch]]: ...


def is_stream(dataset: Any) -> bool:
    return hasattr(dataset, "steps")


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

    def lengths(self) -> torch.Tensor:
        """Real tokens per example (``group_by_length``)."""
        if "attention_mask" not in self.tensors:
            raise SettingsError("group_by_length needs an attention_mask in the training features")
        return self.tensors["attention_mask"].sum(1)


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


def batch_plan(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(examples per optimizer step over all ranks, micro-batches per rank and step).

    Without ``global_batch_size``: ``batch_size × grad_accum × world`` and ``grad_accum``. With it:
    that many examples whatever the number of processes, each rank's share cut into micro-batches
    of at most ``batch_size`` (accumulation grows when they do not fit), so results do not depend
    on the GPU count.
    """
    if cfg.global_batch_size is None:
        return cfg.batch_size * cfg.grad_accum * world, cfg.grad_accum
    if cfg.global_batch_size < world:
        raise SettingsError(f"global_batch_size {cfg.global_batch_size} is smaller than the {world} processes")
    per_rank = -(-cfg.global_batch_size // world)
    return cfg.global_batch_size, max(cfg.grad_accum, -(-per_rank // cfg.batch_size))


GROUP_WINDOW = 50  # global batches sorted together by group_by_length (Hugging Face's mega-batch)


def epoch_permutation(
    n: int, seed: int, epoch: int, lengths: torch.Tensor | None = None, global_batch: int | None = None
) -> torch.Tensor:
    """The epoch's example order, a pure function of (seed, epoch), and with ``lengths`` of the
    lengths and ``global_batch`` (examples per optimizer step over all ranks) too.

    With ``lengths`` (``group_by_length``): the shuffled order is sorted by length rounded up to the
    padding multiple (8; ties keep their random order, so batches differ from epoch to epoch at no
    cost in padding), longest first, within windows of ``GROUP_WINDOW`` global batches, and cut
    into global batches, whose order is then shuffled: a batch holds examples of similar length
    without the epoch running from long to short ones. A last partial batch stays last, where the
    trainer expects it.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if lengths is None:
        return perm
    if global_batch is None:
        raise ValueError("grouping by length needs the global batch size")
    window = GROUP_WINDOW * global_batch
    padded = (lengths + 7) // 8
    grouped = torch.cat([w[torch.argsort(padded[w], descending=True, stable=True)] for w in torch.split(perm, window)])
    full = n // global_batch
    batches = grouped[: full * global_batch].view(full, global_batch)[torch.randperm(full, generator=g)]
    return torch.cat([batches.reshape(-1), grouped[full * global_batch :]])


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


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, a snapshot that cannot be written);
    the message names the stage, the step and what to do."""


def rng_state_plain() -> dict[str, Any]:
    """RNG states as tensors, ints and tuples only, so a snapshot loads with ``weights_only=True``."""
    state = rng_state()
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return state


def set_rng_state_plain(state: Mapping[str, Any]) -> None:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    set_rng_state({**state, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)})


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a crash or a full disk never leaves a
    half-written file under ``path`` (nor, when the write fails, the temporary file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        reason = " ".join(str(e).split())[:200]
        raise TrainingError(
            f"{path}: could not write the snapshot ({reason}); free disk space in {path.parent} "
            "(or set snapshot_dir elsewhere) and rerun: training resumes from the last snapshot"
        ) from None


def load_snapshot_file(path: Path) -> Any:
    """Read a snapshot file as data only (tensors, numbers, strings, containers): a planted file
    that would run code on unpickling is refused (``pickle.UnpicklingError``), never executed."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Files in a model folder that record a run rather than define the model: they differ between two
# identical trainings (wall time) and must not make an identical input look changed.
RUN_RECORD_FILES = frozenset({"distill.json", "train.csv", "metrics.json", "predictions.json"})


def content_digest(path: str | Path) -> str:
    """sha256 identity of an input: a file's bytes, or a folder's files (names and bytes, sorted),
    run records and hidden files excepted. A missing path digests as ``missing``."""
    path = Path(path)
    if path.is_file():
        return _sha256(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if not f.is_file() or f.name in RUN_RECORD_FILES or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{_sha256(f)}\0".encode())
    return h.hexdigest()


def input_digests(inputs: Mapping[str, str | Path | list[str | Path] | None]) -> dict[str, str]:
    """``{name: digest}`` of every input (a list digests its members in order); None is skipped."""
    out = {}
    for name, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            h = hashlib.sha256()
            for v in value:
                h.update(content_digest(v).encode())
            out[name] = h.hexdigest()
        else:
            out[name] = content_digest(value)
    return out


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
    skipped_steps: int = 0


@dataclass
class Best:
    """Every dev evaluation, the best one so far (higher ``metric`` is better) and, with
    ``keep="best"``, its weights (kept on the CPU; written to their own snapshot file)."""

    metric: float | None = None
    step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None

    def record(self) -> dict[str, Any]:
        """What the snapshot stores besides the weights: plain numbers (numpy scalars become floats),
        so the snapshot reads back with ``weights_only=True``."""
        record = {"metric": self.metric, "step": self.step, "history": self.history}
        return json.loads(json.dumps(record, default=float))


@dataclass
class _Run:
    """The state of one ``fit``: what a step needs and what a snapshot saves."""

    model: nn.Module  # the objective, or its DDP / compiled wrapper
    teacher_targets: Callable | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    global_batch: int
    accum: int  # micro-batches per rank and step
    per_epoch: int
    total: int
    step: int = 0
    resumed_from: int = 0
    best: Best = field(default_factory=Best)
    perm_epoch: int = -1
    perm: torch.Tensor | None = None
    lengths: torch.Tensor | None = None  # per example, when group_by_length
    stream: Iterator[list[Batch]] | None = None  # a BatchStream's steps, from the resumed step on
    data_position: Callable[[int], dict[str, Any]] | None = None  # a stream's position after a step
    last_terms: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # fp16 overflow steps the scaler skipped, in all
    skipped_in_row: int = 0
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


def _grad_norm(module: nn.Module, max_norm: float) -> float:
    """The gradients' total L2 norm, clipped to ``max_norm`` when it is set (clip_grad_norm_
    returns the norm before clipping); NaN or inf when a gradient is not finite."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm:
        return float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def _snapshot_step(path: Path) -> int | str:
    try:
        return load_snapshot_file(path)["step"]
    except Exception:  # noqa: BLE001 - only for a message
        return "unknown"


class Trainer:
    """Runs an objective for ``max_steps`` (or ``epochs``) with snapshots, logs and DDP."""

    def __init__(
        self,
        cfg: TrainConfig,
        snapshot_dir: str | Path,
        log_csv: str | Path | None = None,
        fingerprint_extra: Mapping[str, Any] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        inputs: Mapping[str, str | Path | list[str | Path] | None] | None = None,
        name: str | None = None,
    ) -> None:
        """``inputs`` (model folders, feature files, shards) are hashed by content: a snapshot
        taken on other inputs (an upstream stage was rebuilt) is not resumed. ``name`` (the stage)
        appears in error messages."""
        self.cfg = cfg
        self.snapshot_dir = Path(snapshot_dir)
        self.log_csv = Path(log_csv) if log_csv else None
        self.on_step = on_step
        self.name = name or self.snapshot_dir.name.strip(".").removesuffix(".snapshots")
        self.dist, self.device = init_distributed(cfg.device)
        self.inputs = self._input_digests(inputs or {})
        self.fingerprint = cfg.fingerprint({**dict(fingerprint_extra or {}), "inputs": self.inputs})

    def _input_digests(self, inputs: Mapping[str, Any]) -> dict[str, str]:
        """Rank 0 reads the inputs once and tells the other ranks."""
        digests = [input_digests(inputs) if self.dist.main else None]
        if self.dist.enabled:
            dist.broadcast_object_list(digests, src=0)
        return digests[0]

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
        evaluated weights are loaded into the objective at the end, on every rank.
        """
        start_time = time.time()
        # prepare: devices, wrappers, optimizer; resume from a snapshot of the same settings
        run = self._prepare(objective, dataset, teacher)
        logger = _CsvLog(self.log_csv, resume_step=run.step) if self.dist.main else None
        bar = _progress(run.total, run.step, self.dist.main)
        objective.train()
        every = self.cfg.eval_every
        try:
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
        finally:  # an error message is the last line, not a half-drawn progress bar
            for closable in (logger, bar, run.stream):
                if closable is not None:
                    closable.close()
        selection = self._select(run, objective)
        wall = time.time() - start_time
        return TrainResult(run.step, wall, run.resumed_from, selection, run.last_terms, self.dist.world, run.skipped)

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
        global_batch, accum = batch_plan(cfg, d.world)
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
            accum=accum,
            per_epoch=per_epoch,
            total=total,
        )
        if cfg.group_by_length:
            if not hasattr(dataset, "lengths"):
                raise SettingsError(
                    "group_by_length applies to examples held in memory (task stages), not to "
                    f"{type(dataset).__name__}: set train.group_by_length: false for this stage"
                )
            run.lengths = dataset.lengths()
        if is_stream(dataset):
            share = len(torch.tensor_split(torch.arange(global_batch), d.world)[d.rank])
            run.data_position = lambda step: dataset.position(step * share, d.rank, d.world)
        self._resume(run, objective)
        if is_stream(dataset):
            run.stream = dataset.steps(run.step, global_batch, accum, d.rank, d.world, device.type == "cuda")
        return run

    def _step(self, run: _Run, objective: nn.Module, dataset: BatchDataset, teacher: nn.Module | None) -> float:
        """One optimizer step over this rank's micro-batches; returns its learning rate."""
        cfg, d = self.cfg, self.dist
        if run.stream is not None:  # ready-made batches; a stream never runs short
            parts: list[Any] = next(run.stream)
            n_step = run.global_batch
        else:
            epoch, in_epoch = divmod(run.step, run.per_epoch)
            if epoch != run.perm_epoch:
                run.perm = epoch_permutation(len(dataset), cfg.seed, epoch, run.lengths, run.global_batch)
                run.perm_epoch = epoch
            parts = micro_batches(run.perm, in_epoch, run.global_batch, d.rank, d.world, run.accum)
            # Examples of this step over all ranks (the epoch's last step may be short).
            n_step = min(run.global_batch, len(dataset) - in_epoch * run.global_batch)
        n_local = 0
        lr = lr_at(cfg, run.step + 1, run.total)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        # forward, backward
        sums: dict[str, float] = {}
        for i, idx in enumerate(parts):
            batch = idx if run.stream is not None else dataset.batch(idx)
            rows = len(next(iter(batch.values())))
            n_local += rows
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
                    # DDP averages the ranks' gradients: weighting by world / n_step makes that the
                    # exact mean over the step's examples, also when ranks hold unequal shares.
                    weight = rows * d.world / n_step
                    run.scaler.scale(terms["loss"] * weight).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * rows
        # Loss terms averaged over every example of the global batch (all ranks), known to every
        # rank before the update, so all ranks take the same decision on a non-finite value.
        keys = sorted(sums)
        packed = _all_reduce_sum(torch.tensor([sums[k] for k in keys] + [n_local], dtype=torch.float64), d)
        n_global = packed[-1].item()
        terms_now = {k: packed[j].item() / n_global for j, k in enumerate(keys)}
        # update (gradients are identical on every rank after DDP's all-reduce)
        run.scaler.unscale_(run.optimizer)
        norm = _grad_norm(objective, cfg.max_grad_norm)
        finite = math.isfinite(norm) and all(math.isfinite(v) for v in terms_now.values())
        if not finite and not run.scaler.is_enabled():
            self._diverged(run, terms_now, norm)
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
        run.scaler.step(run.optimizer)  # fp16: skipped when a gradient overflowed
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler.is_enabled():
            if run.scaler.get_scale() < scale:  # the scaler found inf/NaN and skipped the update
                run.skipped += 1
                run.skipped_in_row += 1
                if run.skipped_in_row > cfg.max_skipped_steps:
                    self._diverged(run, terms_now, norm, skipped=run.skipped_in_row)
            elif not finite:
                self._diverged(run, terms_now, norm)
            else:
                run.skipped_in_row = 0
        run.step += 1
        run.last_terms = terms_now
        for k, v in run.last_terms.items():
            run.window[k] = run.window.get(k, 0.0) + v
        run.window_steps += 1
        run.window_seqs += int(n_global)
        return lr

    def _diverged(self, run: _Run, terms: Mapping[str, float], norm: float, skipped: int = 0) -> None:
        """Stop before a non-finite update reaches the weights; nothing is written."""
        snap = self._snapshot_path()
        last = f"{snap} (step {_snapshot_step(snap)})" if snap.is_file() else "none (training starts afresh on rerun)"
        values = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        what = (
            f"{skipped} fp16 overflow steps in a row (max_skipped_steps {self.cfg.max_skipped_steps})"
            if skipped
            else "non-finite loss or gradient"
        )
        raise TrainingError(
            f"{self.name}: {what} at step {run.step + 1} of {run.total} ({values}, gradient norm {norm:.4g}); "
            f"no update applied, no output written; last good snapshot: {last}; lower train.lr "
            f"(now {self.cfg.lr:g}) or keep max_grad_norm on"
            + (", or train in bf16/fp32 instead of fp16" if self.cfg.precision == "fp16" else "")
        )

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
        """Snapshot every ``snapshot_every`` steps and after the last one; on SIGTERM (any rank)
        snapshot and exit 143. The final snapshot lets a job killed after its training ended (its
        output written but not yet recorded by the scheduler, which then deletes it) finish on the
        retry without training again."""
        stop = _all_reduce_sum(torch.tensor([1.0 if flag["stop"] else 0.0]), self.dist).item() > 0
        if run.step % self.cfg.snapshot_every == 0 or stop or run.step == run.total:
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
        """Load the best evaluated weights (``keep="best"``) and say which step was kept.

        Only rank 0 evaluates; under DDP it sends every rank its evaluation record and, with
        ``keep="best"``, the best weights, so all ranks end with the same weights and selection
        (before, the other ranks kept their last weights and reported no evaluation, unless the
        run was resumed: then they loaded the best weights from the snapshot)."""
        best, d = run.best, self.dist
        if d.enabled:
            shared = [best.record()]
            dist.broadcast_object_list(shared, src=0)
            best.metric, best.step, best.history = (shared[0][k] for k in ("metric", "step", "history"))
        selection = {
            "keep": self.cfg.keep,
            "best_step": best.step,
            "best_metric": best.metric,
            "history": best.history,
            "final_step": run.step,
            "selected_step": run.step,
        }
        if self.cfg.keep == "best" and best.step is not None:
            if d.main:
                objective.load_state_dict(best.weights)
            if d.enabled:
                with torch.no_grad():
                    for tensor in objective.state_dict().values():  # views of the parameters and buffers
                        dist.broadcast(tensor, src=0)
            selection["selected_step"] = best.step
        objective.eval()
        return selection

    # -- snapshots ------------------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        return self.snapshot_dir / "snapshot.pt"

    def _write_snapshot(self, run: _Run, objective: nn.Module) -> None:
        d, step, best = self.dist, run.step, run.best
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        # Each rank's RNG states and, for a stream, where its data stands (epoch, file, row).
        rank_state = {**rng_state_plain(), **({"data_position": run.data_position(step)} if run.data_position else {})}
        atomic_save(rank_state, self.snapshot_dir / f"rng_rank{d.rank}_step{step}.pt")
        _barrier(d)
        if d.main:
            state = {
                "fingerprint": self.fingerprint,
                "inputs": self.inputs,
                "step": step,
                "world": d.world,
                "objective": objective.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": {"schedule": self.cfg.schedule, "step": step},
                "scaler": run.scaler.state_dict(),
                "best": best.record(),
                "skipped": run.skipped,
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
        """The snapshot to resume, or None. One that cannot be read as data, or was taken with
        other settings or on other inputs, is moved aside (the newest such folder is kept as
        ``.stale-<time>``, older ones are removed) and training starts afresh."""
        path = self._snapshot_path()
        if not path.is_file():
            return None
        why = None
        try:
            state = load_snapshot_file(path)
            rng = load_snapshot_file(self.snapshot_dir / f"rng_rank{self.dist.rank}_step{state['step']}.pt")
        except Exception as e:  # noqa: BLE001 - refused (code in the file), truncated or foreign
            why = f"it cannot be read as a snapshot ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        else:
            if state.get("world") != self.dist.world:
                why = f"it was taken with {state.get('world')} processes, this run has {self.dist.world}"
            elif state.get("inputs", {}) != self.inputs and state.get("fingerprint") != self.fingerprint:
                old = state.get("inputs", {})
                changed = sorted(k for k in set(old) | set(self.inputs) if old.get(k) != self.inputs.get(k))
                why = f"its inputs changed since ({', '.join(changed)}: rebuilt upstream or replaced)"
            elif state.get("fingerprint") != self.fingerprint:
                why = "it was taken with other settings"
        # Every rank has decided (the same way: same files) before rank 0 moves the folder.
        refused = _all_reduce_sum(torch.tensor([0.0 if why is None else 1.0]), self.dist).item() > 0
        if not refused:
            state["rng"] = rng
            return state
        _barrier(self.dist)
        if self.dist.main:
            self._set_aside(why or "another rank could not read it")
        _barrier(self.dist)
        return None

    def _set_aside(self, why: str) -> None:
        stale = self.snapshot_dir.with_name(f"{self.snapshot_dir.name}.stale-{time.time_ns()}")
        older = sorted(self.snapshot_dir.parent.glob(f"{self.snapshot_dir.name}.stale-*"))
        shutil.move(str(self.snapshot_dir), stale)
        # Only the newest set-aside snapshot is kept for inspection: they are not outputs, and a
        # long-lived results folder would otherwise collect one per change of settings.
        for folder in older:
            shutil.rmtree(folder, ignore_errors=True)
        log.warning(
            "%s: not resuming the snapshot in %s: %s; moved to %s%s, starting from the new inputs",
            self.name,
            self.snapshot_dir,
            why,
            stale,
            f" (removed {len(older)} older set-aside snapshot folder(s))" if older else "",
        )

    def _resume(self, run: _Run, objective: nn.Module) -> None:
        snap = self._read_snapshot()
        if snap is None:
            return
        objective.load_state_dict(snap["objective"])
        run.optimizer.load_state_dict(snap["optimizer"])
        run.scaler.load_state_dict(snap["scaler"])
        run.step = run.resumed_from = snap["step"]
        run.best = Best(**snap["best"])
        run.skipped = snap.get("skipped", 0)
        if run.best.step is not None and self.cfg.keep == "best" and self.dist.main:  # rank 0 sends them at the end
            run.best.weights = load_snapshot_file(self.snapshot_dir / f"best_step{run.best.step}.pt")
        set_rng_state_plain(snap["rng"])
        where = snap["rng"].get("data_position")
        log.info("resumed from %s at step %d%s", self._snapshot_path(), run.step, f" (data: {where})" if where else "")

    def clear_snapshots(self) -> None:
        """Remove the snapshot folder (a caller that records the output itself, not a stage)."""
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
    return progress(total, "train", "step", initial=initial, enabled=main)
