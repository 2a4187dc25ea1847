"""Settings groups that stages take as one argument: training, backbone losses, shards, augmentation.

Each is a dataclass whose defaults are the defaults of the workflow: ``schemas/config.schema.yaml``
repeats them for validation and a test keeps the two equal (field names, types, choices and
defaults). The CLI turns each field into a dotted option (``--train.lr 1e-4``) with the help text
of the class docstring. This module imports nothing heavy, so the Snakefile and ``--help`` stay fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints


class SettingsError(ValueError):
    """A settings group with an unknown key or an invalid value; the message names both."""


def check_choices(obj: Any) -> None:
    """Raise if a ``Literal``-typed field holds a value outside its choices."""
    for name, hint in get_type_hints(type(obj)).items():
        choices = literal_choices(hint)
        if choices is not None and getattr(obj, name) not in choices:
            raise SettingsError(
                f"{type(obj).__name__}.{name} must be one of {list(choices)}, got {getattr(obj, name)!r}"
            )


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of ``Literal[...]`` or ``Literal[...] | None``; None for other types."""
    if getattr(hint, "__origin__", None) is Literal:
        return get_args(hint)
    args = get_args(hint)
    if args and any(getattr(a, "__origin__", None) is Literal for a in args):
        out: list[Any] = []
        for a in args:
            out.extend(get_args(a) if getattr(a, "__origin__", None) is Literal else [None] if a is type(None) else [])
        return tuple(out)
    return None


def from_mapping(cls: type, value: Any, what: str = "") -> Any:
    """``cls(**value)`` with a one-line error naming an unknown key (and the keys ``cls`` knows)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise SettingsError(f"{what or cls.__name__}: expected a mapping of {cls.__name__} fields, got {value!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise SettingsError(
            f"{what or cls.__name__}: unknown key(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(names)}"
        )
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{what or cls.__name__}: {e}") from None


@dataclass
class TrainConfig:
    """Settings of one training stage. Defaults follow the reference recipe (docs/reference.md#optimizer-and-schedule).

    Attributes:
        max_steps: optimizer steps (give exactly one of max_steps and epochs)
        epochs: passes over the training data (may be fractional)
        batch_size: examples per process and micro-batch
        grad_accum: micro-batches per optimizer step
        global_batch_size: examples per optimizer step over all processes (null = batch_size x
            grad_accum x processes); when set, results do not depend on the GPU count: batch_size
            caps each micro-batch and accumulation grows as needed
        lr: peak learning rate
        schedule: linear (warm-up, then linear decay to 0) or constant
        warmup: warm-up as a fraction of all steps
        optimizer: adamw (fused where available) or adam_nobc (Adam without bias correction, as the reference)
        weight_decay: decoupled weight decay, not applied to biases and LayerNorm
        betas: Adam's (beta1, beta2)
        eps: Adam's epsilon
        max_grad_norm: gradient clipping norm (0 = off)
        precision: fp32, bf16 or fp16 (fp16 adds a gradient scaler)
        max_skipped_steps: fp16: overflow steps in a row the gradient scaler may skip before training
            stops (fp32 and bf16 stop at the first non-finite loss or gradient)
        seed: random seed (each rank adds its rank)
        teacher_dropout: keep the teacher's dropout on while it produces targets (the reference does)
        dynamic_padding: cut each batch to its longest sequence, rounded up to 8
        group_by_length: with dynamic_padding, batch examples of similar length: the epoch's shuffled
            order is sorted by length within windows of 50 global batches, cut into batches, and the
            batches shuffled (less padding, no long-to-short curriculum; task stages only)
        snapshot_every: write a resumable snapshot every this many steps
        log_every: write a train.csv row every this many steps
        eval_every: evaluate on dev every this many steps (null = once, at the end)
        keep: keep the last weights or the best dev evaluation
        device: auto (CUDA when available), cpu, cuda or cuda:N
        compile: torch.compile mode for the objective and the teacher forward (null = eager;
            reduce-overhead = CUDA graphs)
    """

    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    grad_accum: int = 1
    global_batch_size: int | None = None
    lr: float = 1e-4
    schedule: Literal["linear", "constant"] = "linear"
    warmup: float = 0.1
    optimizer: Literal["adamw", "adam_nobc"] = "adamw"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_skipped_steps: int = 20
    seed: int = 1
    teacher_dropout: bool = True
    dynamic_padding: bool = True
    group_by_length: bool = False
    snapshot_every: int = 1000
    log_every: int = 50
    eval_every: int | None = None
    keep: Literal["last", "best"] = "last"
    device: str = "auto"
    compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise SettingsError("give exactly one of max_steps and epochs")
        check_choices(self)
        if self.group_by_length and not self.dynamic_padding:
            raise SettingsError("group_by_length needs dynamic_padding: at a fixed length there is no padding to save")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def fingerprint(self, extra: Mapping[str, Any] | None = None) -> str:
        """Hash of everything that changes the result (not logging/snapshot cadence or device)."""
        d = dataclasses.asdict(self)
        for k in ("snapshot_every", "log_every", "device", "compile", "max_skipped_steps"):
            d.pop(k)
        blob = json.dumps({"train": d, "extra": dict(extra or {})}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class BackboneLossConfig:
    """Which backbone (intermediate-layer) losses to use; defaults reproduce the reference.

    Attributes:
        attention: attention-score loss per mapped layer pair: kl, mse or null (off)
        value: MiniLM value-relation loss: kl or null
        hidden: hidden-state loss through the learned projection: cosine, mse or null
        embedding: embedding-output loss: cosine, mse or null (off in the reference)
        layer_map: last, uniform, one teacher layer per student layer, or [student, teacher] pairs (0-based)
        masking: faithful (the reference's arithmetic, padding included) or masked (padding excluded)
        weights: weight per loss term (attention, value, hidden, embedding); 1 when absent
    """

    attention: Literal["kl", "mse"] | None = "kl"
    value: Literal["kl"] | None = "kl"
    hidden: Literal["cosine", "mse"] | None = "cosine"
    embedding: Literal["cosine", "mse"] | None = None
    layer_map: str | list[Any] = "last"
    masking: Literal["faithful", "masked"] = "faithful"
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class ShardSettings:
    """How pre-training sentence pairs and masks are made (Google's create_pretraining_data).

    Attributes:
        max_seq_length: tokens per instance, [CLS] and [SEP]s included
        short_seq_prob: share of instances with a shorter random target length
        masking: static (masks written into the shard) or none
        masked_lm_prob: share of tokens masked
        max_predictions: masked positions per instance at most
        dupe_factor: passes over the documents, each with other masks and pairings
        lowercase: lower-case and strip accents before WordPiece (uncased vocabularies)
    """

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    masking: Literal["static", "none"] = "static"
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    dupe_factor: int = 5
    lowercase: bool = True

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class ReaderSettings:
    """How general distillation reads its shards: a stream per rank (bertdistill.data.stream).

    Attributes:
        shuffle_buffer: sequences per shuffle window; memory is about two windows per rank (~1 KB per sequence of 128)
        workers: background reader processes that prefetch batches (0 = read in the training process; at most 1)
    """

    shuffle_buffer: int = 16384
    workers: int = 1

    def __post_init__(self) -> None:
        if self.shuffle_buffer < 1:
            raise SettingsError(f"reader.shuffle_buffer {self.shuffle_buffer}: must be at least 1")
        if self.workers not in (0, 1):
            raise SettingsError(f"reader.workers {self.workers}: 0 (in process) or 1 (one background reader)")


@dataclass
class AugmentSettings:
    """TinyBERT augmentation (docs/reference.md#augmentation).

    Attributes:
        n: augmented variants tried per text (rounds; the reference uses SST-2 20, SQuAD 15)
        m: candidates per word
        p: probability that a round replaces an eligible word
        seed: random seed; each text is seeded from (seed, text index)
        vector_vocab: word-vector neighbours come from the first this many words
        max_batch_tokens: tokens per masked-LM batch
        max_texts: augment only the first this many texts (SQuAD: paragraphs), keep the rest (null = all)
    """

    n: int = 20
    m: int = 15
    p: float = 0.4
    seed: int = 1
    vector_vocab: int = 100_000
    max_batch_tokens: int = 16384
    max_texts: int | None = None


@dataclass
class FeatureSettings:
    """Task feature windows; unset fields take the task's defaults (bertdistill.tasks.TASKS).

    Attributes:
        max_seq_length: tokens per feature, special tokens included
        doc_stride: SQuAD: stride between context windows
        max_query_length: SQuAD: question tokens kept at most
        lowercase: lower-case and strip accents before WordPiece
    """

    max_seq_length: int | None = None
    doc_stride: int | None = None
    max_query_length: int | None = None
    lowercase: bool = True


@dataclass
class ClozeSettings:
    """Cloze questions over corpus paragraphs (the embedded default's SQuAD stand-in).

    Attributes:
        dev_fraction: share of articles that go to dev (by a hash of the text): checkpoint selection
        test_fraction: share of articles that go to test (by the same hash): the reported metric
        seed: random seed of blanks and splits
        max_questions_per_paragraph: questions per paragraph at most
        min_paragraph_words: shorter paragraphs are skipped
        max_paragraph_words: longer paragraphs are skipped (question and paragraph should fit one window)
        max_train: training questions at most (null = all)
        max_dev: dev questions at most (null = all)
        max_test: test questions at most (null = all)
    """

    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_questions_per_paragraph: int = 3
    min_paragraph_words: int = 40
    max_paragraph_words: int = 250
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None


@dataclass
class ExportSettings:
    """ONNX export of a model with its task head (docs/deploy.md).

    Attributes:
        opset: ONNX opset of the exported graph
        tolerance: largest allowed absolute difference between ONNX Runtime's and PyTorch's logits on dev features
        parity_features: dev features compared with PyTorch (null = all)
        optimize: also write model.opt.onnx, fused by ONNX Runtime's transformer optimizer (model type bert)
        int8: also write model.int8.onnx, with INT8 weights (see int8_activations), and evaluate it on dev
        per_channel: INT8: one scale per output channel, not per weight matrix (where outliers set the scale)
        reduce_range: INT8: 7-bit weights, which avoids overflow on CPUs without VNNI (AVX2)
        int8_activations: INT8: scales of the quantised products' inputs, per batch at run time
            (dynamic) or fixed from calibration on training features (minmax, percentile: a row's
            result no longer depends on the rows batched with it)
        calibration_features: INT8 minmax/percentile: training features drawn for calibration
        bf16: also evaluate the PyTorch model under bf16 autocast on the CPU, where the CPU computes bf16 natively
        threads: ONNX Runtime threads for the parity check and dev evaluation (null = all cores)
    """

    opset: int = 17
    tolerance: float = 1.0e-3
    parity_features: int | None = 256
    optimize: bool = True
    int8: bool = True
    per_channel: bool = True
    reduce_range: bool = True
    int8_activations: Literal["dynamic", "minmax", "percentile"] = "dynamic"
    calibration_features: int = 256
    bf16: bool = True
    threads: int | None = None


BACKENDS = (
    "torch",
    "torch-fp16",
    "torch-bf16",
    "torch-compile",
    "torch-bf16-cpu",
    "torch-compile-cpu",
    "torch-compile-bf16-cpu",
    "ort",
    "ort-fused",
    "ort-int8",
    "ort-cuda",
    "ort-cuda-fp16",
    "ort-tensorrt",
    "tensorrt-fp16",
)


@dataclass
class BenchmarkSettings:
    """Inference benchmark: every backend x batch size x sequence length, every backend's student
    and teacher interleaved.

    Attributes:
        backends: backends to measure; one that cannot run here is reported as skipped with the reason
        batch_sizes: sequences per batch
        seq_lengths: tokens per sequence (every position is a real token)
        warmup: untimed batches per model before timing
        iterations: timed batches per model: rounds in which every model of every backend times one batch
        threads: CPU threads for PyTorch and ONNX Runtime (null = all cores this process may use)
    """

    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    seq_lengths: list[int] = field(default_factory=lambda: [128, 384])
    warmup: int = 3
    iterations: int = 20
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise SettingsError(f"BenchmarkSettings.backends: unknown {unknown}; known backends: {', '.join(BACKENDS)}")
        if self.iterations < 1 or self.warmup < 0:
            raise SettingsError("BenchmarkSettings: iterations must be >= 1 and warmup >= 0")


def layer_map(
    num_student_layers: int, num_teacher_layers: int, kind: str | Sequence[int] | Sequence[Sequence[int]] = "last"
) -> list[tuple[int, int]]:
    """Pairs (student layer, teacher layer), 0-based over encoder layers.

    ``last``: the last student layer to the last teacher layer (MiniLM, the reference).
    ``uniform``: student i -> teacher (i+1)·k − 1 with k = T / S (TinyBERT; T % S must be 0).
    A list: either one teacher index per student layer, or explicit (student, teacher) pairs.
    """
    s, t = num_student_layers, num_teacher_layers
    if kind == "last":
        pairs = [(s - 1, t - 1)]
    elif kind == "uniform":
        if t % s:
            raise ValueError(f"uniform layer map needs teacher layers ({t}) divisible by student layers ({s})")
        k = t // s
        pairs = [(i, (i + 1) * k - 1) for i in range(s)]
    elif isinstance(kind, str):
        raise ValueError(f"layer map must be 'last', 'uniform' or a list, got {kind!r}")
    else:
        items = list(kind)
        if all(isinstance(x, int) for x in items):
            if len(items) != s:
                raise ValueError(f"layer map lists {len(items)} teacher layers for {s} student layers")
            pairs = list(enumerate(items))
        else:
            pairs = [(int(a), int(b)) for a, b in items]
    for a, b in pairs:
        if not (0 <= a < s and 0 <= b < t):
            raise ValueError(f"layer pair ({a}, {b}) out of range for {s} student / {t} teacher layers")
    return pairs
