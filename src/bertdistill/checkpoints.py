"""Load and save BERT checkpoints: Hugging Face folders, NVIDIA NGC ``.pt`` files, our own folders.

Loading is strict: every parameter of the requested model must come from the checkpoint and every
checkpoint tensor must be used (heads the caller did not ask for are the one exception: a
pre-training checkpoint's ``cls.*`` may be dropped when loading a bare encoder). The only other
relaxation is explicit: ``init_head=True`` initialises a head (and, for classification, the
pooler) that the checkpoint does not have, as the reference's prediction stage does.

Pickled files are read with ``torch.load(weights_only=True)``; the only extra types allowed are the
harmless ones NGC training checkpoints carry. A checkpoint that needs anything else is refused:
loading a model must never run code from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import HEADS, HF_ARCHITECTURES, BertConfig, BertModel, BertPreTrainedModel, build_model

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin",)
VOCAB_NAME = "vocab.txt"
PROJECTION_NAME = "projection.safetensors"
NVIDIA_PROJECTION_NAME = "project.bin"
SETTINGS_NAME = "distill.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
TOKENIZER_NAME = "tokenizer.json"
# The tokenizer files a saved folder carries (with vocab.txt), so that transformers' AutoTokenizer
# loads it with the model's own lower-casing and length limit instead of its defaults.
TOKENIZER_FILES = (TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_MAP_NAME, TOKENIZER_NAME)
# config.json keys a source checkpoint carries that would be false in a folder we write: the name
# of the model it was made from (Hugging Face shows it as this model's origin) and the library
# version that wrote it.
FOREIGN_CONFIG_KEYS = ("_name_or_path", "name_or_path", "transformers_version")
# Special tokens by the role Hugging Face's tokenizer files give them.
SPECIAL_TOKEN_ROLES = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}

# Types NGC training checkpoints may contain besides tensors and containers (the arguments
# namespace of the training run). Reconstructing them runs no code from the file.
SAFE_PICKLE_GLOBALS: list[Any] = [argparse.Namespace]

_HEAD_PREFIXES = {"mlm": ("cls.predictions.",), "classification": ("classifier.",), "qa": ("qa_outputs.",)}
# Tensors that may appear in a checkpoint but are never needed: NSP head, tied decoder copies,
# Hugging Face's position-id buffers.
_IGNORABLE_PREFIXES = ("cls.seq_relationship.",)
_TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Reading raw state dicts


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or pickled (``.pt``/``.bin``) state dict without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}); "
                "it is truncated or corrupt, copy or export it again"
            ) from None
    return _read_pickle(path)


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        with torch.serialization.safe_globals(SAFE_PICKLE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        detail = f"it needs {', '.join(unsafe)}" if unsafe else str(e).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused, this pickle holds more than weights ({detail}); loading it could run "
            "code. Re-save only its state dict (torch.save(model.state_dict(), ...)) or convert it to safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]}); it is truncated or corrupt"
        ) from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # NGC training checkpoints wrap the weights
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under a 'model' key)")
    return dict(obj)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only used to improve a message
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_PICKLE_GLOBALS}
    return [g for g in found if g not in allowed]


def normalize_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map NVIDIA/NGC and DDP names onto Hugging Face names, without the ``bert.`` prefix.

    ``module.`` (DDP) and ``bert.`` prefixes are stripped; ``gamma``/``beta`` become
    ``weight``/``bias``; ``dense_act`` becomes ``dense``. Head keys (``cls.*``,
    ``classifier.*``, ``qa_outputs.*``) keep their names.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith("bert."):
            k = k[len("bert.") :]
        parts = k.split(".")
        parts = ["weight" if p == "gamma" else "bias" if p == "beta" else p for p in parts]
        parts = ["dense" if p == "dense_act" else p for p in parts]
        k = ".".join(parts)
        if k in out:
            raise CheckpointError(f"two checkpoint tensors map to the same name {k!r}")
        out[k] = value
    return out


# ----------------------------------------------------------------------------------------------
# Folders


def _find_weights(folder: Path) -> Path:
    for name in (SAFETENSORS_NAME, *PICKLE_NAMES):
        if (folder / name).is_file():
            return folder / name
    pts = sorted(folder.glob("*.pt"))
    if len(pts) == 1:
        return pts[0]
    raise CheckpointError(
        f"{folder}: no weights found; expected {SAFETENSORS_NAME}, pytorch_model.bin or a single *.pt file"
    )


def read_config(path: str | Path) -> BertConfig:
    """Read a ``config.json`` (Hugging Face or NVIDIA field names)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model folder needs config.json (copy the model's BERT config there)")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e}); fix or replace the file") from None
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in d]
    if missing:
        raise CheckpointError(f"{path}: not a BERT config, missing {', '.join(missing)}")
    try:
        return BertConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid BERT config ({e})") from None


def read_vocab(path: str | Path) -> list[str]:
    """The WordPiece vocabulary, one token per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text; a vocab.txt holds one WordPiece token per line") from None
    return text.rstrip("\n").split("\n")


def check_vocab(vocab_path: Path, vocab_size: int) -> None:
    """A vocab must fill the embedding table, or leave only the rows NVIDIA pads to a multiple of 8."""
    n = len(read_vocab(vocab_path))
    padded = (n + 7) // 8 * 8
    if vocab_size not in (n, padded):
        raise CheckpointError(
            f"{vocab_path}: {n} tokens but the model's word embeddings have {vocab_size} rows; "
            "use the vocab.txt the model was trained with"
        )


# ----------------------------------------------------------------------------------------------
# Loading into a model


def load_model(
    path: str | Path,
    head: str | None = None,
    *,
    config: BertConfig | str | Path | None = None,
    init_head: bool = False,
    num_labels: int | None = None,
) -> BertPreTrainedModel:
    """Load a Hugging Face folder, an NGC folder/``.pt`` file or one of our folders.

    ``head`` is ``None`` (bare encoder), ``"mlm"``, ``"classification"`` or ``"qa"``. With
    ``init_head=True`` a head the checkpoint lacks is freshly initialised (N(0, 0.02)); otherwise
    its absence is an error. The model is returned in eval mode with ``model.source_dir`` set.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    path = Path(path)
    if path.is_dir():
        folder, weights = path, None
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise CheckpointError(f"{path}: no such file or folder")
    if config is None:
        config = read_config(folder / CONFIG_NAME)
    elif not isinstance(config, BertConfig):
        config = read_config(config)
    if num_labels is not None:
        config.num_labels = num_labels
    if weights is None:
        weights = _find_weights(folder)
    state = normalize_keys(read_state_dict(weights))
    model = _model_from_state(state, config, head, init_head, weights)
    vocab = folder / VOCAB_NAME
    if vocab.is_file():
        check_vocab(vocab, model.config.vocab_size)
    model.source_dir = folder  # type: ignore[attr-defined]
    return model.eval()


def _model_from_state(
    state: dict[str, torch.Tensor], config: BertConfig, head: str | None, init_head: bool, file: Path
) -> BertPreTrainedModel:
    emb = state.get("embeddings.word_embeddings.weight")
    if emb is not None and emb.shape[0] != config.vocab_size:
        raise CheckpointError(
            f"{file}: word embeddings have {emb.shape[0]} rows but config.json says vocab_size "
            f"{config.vocab_size}; use the config the checkpoint was trained with"
        )
    has_pooler = any(k.startswith("pooler.") for k in state)
    model = build_model(config, head, add_pooling_layer=has_pooler)
    prefix = "" if head is None else "bert."

    # Split checkpoint tensors into backbone and head tensors, expressed in target names.
    source: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(_BUFFER_SUFFIXES) or k in _TIED_KEYS or k.startswith(_IGNORABLE_PREFIXES):
            continue
        head_of = next((h for h, ps in _HEAD_PREFIXES.items() if k.startswith(ps)), None)
        if head_of is not None:
            if head_of == head:
                source[k] = v
            continue  # a head the caller did not ask for (e.g. the MLM head of a pre-training checkpoint)
        if k.startswith("pooler.") and head in ("mlm", "qa"):
            continue  # Hugging Face's MLM and QA models have no pooler
        source[prefix + k] = v

    target = {k: v for k, v in model.state_dict().items() if k not in _TIED_KEYS}
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if init_head and head is not None:
        fresh = tuple(_HEAD_PREFIXES[head]) + (("bert.pooler.",) if head == "classification" else ())
        missing = [k for k in missing if not k.startswith(fresh)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {_key_list(unexpected)}")
        hint = (
            " (pass init_head=True to start a new head)"
            if head
            and all(k.startswith(tuple(_HEAD_PREFIXES[head]) + ("bert.pooler.",)) for k in missing)
            and missing
            and not unexpected
            else ""
        )
        raise CheckpointError(f"{file}: key mismatch for a {HF_ARCHITECTURES[head]}: {'; '.join(parts)}{hint}")
    bad_shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in source.items() if v.shape != target[k].shape
    ]
    if bad_shapes:
        raise CheckpointError(f"{file}: shape mismatch (checkpoint vs config.json): {_key_list(bad_shapes)}")
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for k, v in source.items():
            params[k].copy_(v.to(params[k].dtype))
    return model


def _key_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def init_from_teacher(
    student: BertModel, teacher: BertModel, layers: list[int], source: str | Path = "teacher"
) -> None:
    """Copy the teacher's embeddings and its encoder layers ``layers`` (0-based, one per student
    layer) into ``student`` (DistilBERT-style initialisation; TinyBERT starts from random weights).
    The widths must be the teacher's: a one-line error names what differs."""
    s, t = student.config, teacher.config
    if len(layers) != s.num_hidden_layers:
        raise CheckpointError(
            f"{source}: init_from_teacher_layers lists {len(layers)} layers but the student has "
            f"{s.num_hidden_layers}; give one teacher layer per student layer"
        )
    bad = [i for i in layers if not 0 <= i < t.num_hidden_layers]
    if bad:
        raise CheckpointError(
            f"{source}: teacher layers {bad} do not exist (the teacher has {t.num_hidden_layers}, 0-based)"
        )
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
    ):
        if getattr(s, key) != getattr(t, key):
            raise CheckpointError(
                f"{source}: student {key} {getattr(s, key)} != teacher's {getattr(t, key)}; "
                "init_from_teacher_layers needs the teacher's widths"
            )
    with torch.no_grad():
        student.embeddings.load_state_dict(teacher.embeddings.state_dict())
        for new, old in enumerate(layers):
            student.encoder.layer[new].load_state_dict(teacher.encoder.layer[old].state_dict())


def load_projection(folder: str | Path) -> nn.Linear | None:
    """The learned student→teacher projection of a folder, or ``None`` if it has none.

    Reads our ``projection.safetensors`` or NVIDIA's ``project.bin`` (``fit_dense.*``).
    """
    folder = Path(folder)
    for name in (PROJECTION_NAME, NVIDIA_PROJECTION_NAME):
        if (folder / name).is_file():
            state = read_state_dict(folder / name)
            state = {k.removeprefix("module.").removeprefix("fit_dense."): v for k, v in state.items()}
            if set(state) != {"weight", "bias"}:
                raise CheckpointError(
                    f"{folder / name}: expected fit_dense.weight and fit_dense.bias, got {sorted(state)}"
                )
            out_dim, in_dim = state["weight"].shape
            proj = nn.Linear(in_dim, out_dim)
            proj.load_state_dict(state)
            return proj
    return None


def find_checkpoint(folder: Path) -> Path:
    """In an unpacked download: the folder holding config.json, or the single weights file."""
    if (folder / CONFIG_NAME).is_file():
        return folder
    configs = sorted(folder.rglob(CONFIG_NAME))
    if len(configs) == 1:
        return configs[0].parent
    weights = sorted([*folder.rglob("*.pt"), *folder.rglob("*.bin"), *folder.rglob("*.safetensors")])
    if len(weights) == 1:
        return weights[0]
    raise CheckpointError(
        f"{folder}: no config.json and {len(weights)} weight files (.pt/.bin/.safetensors); "
        "point the config at one checkpoint file or a folder with config.json"
    )


def check_same_vocab(student_dir: Path, teacher_dir: Path) -> None:
    """Raise unless two model folders carry the same vocab.txt (when both have one)."""
    sv, tv = Path(student_dir) / VOCAB_NAME, Path(teacher_dir) / VOCAB_NAME
    if sv.is_file() and tv.is_file() and sv.read_bytes() != tv.read_bytes():
        raise CheckpointError(f"{sv}: differs from the teacher's {tv}; student and teacher must share one vocabulary")


def vocab_file(path: str | Path) -> Path:
    """A vocab.txt given directly, or the one inside a model folder."""
    path = Path(path)
    return path / VOCAB_NAME if path.is_dir() else path


# ----------------------------------------------------------------------------------------------
# Saving


def tokenizer_lowercase(folder: str | Path) -> bool | None:
    """``do_lower_case`` of a folder's ``tokenizer_config.json``; ``None`` when it has none."""
    path = Path(folder) / TOKENIZER_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("do_lower_case")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return None if value is None else bool(value)


def vocab_is_cased(vocab: str | Path) -> bool:
    """True when a WordPiece vocabulary holds upper-case word pieces: a cased model's vocab (an
    uncased one has only lower-case pieces besides its ``[SPECIAL]`` tokens)."""
    return any(t != t.lower() for t in read_vocab(vocab) if not (t.startswith("[") and t.endswith("]")))


def _resolve_lowercase(model: BertPreTrainedModel, vocab: Path) -> bool:
    """The lower-casing a model was trained with, when the caller does not say: its source
    folder's tokenizer files, else those beside its vocab, else what the vocab implies."""
    src = getattr(model, "source_dir", None)
    for folder in (src, vocab.parent):
        found = tokenizer_lowercase(folder) if folder is not None else None
        if found is not None:
            return found
    return not vocab_is_cased(vocab)


def write_tokenizer_files(folder: str | Path, vocab: str | Path, lowercase: bool, model_max_length: int) -> None:
    """``tokenizer_config.json``, ``special_tokens_map.json`` and ``tokenizer.json`` for ``vocab``.

    ``tokenizer.json`` is the tokenizer the workflow itself builds features with
    (:func:`bertdistill.tokenization.load_tokenizer`), so a fast tokenizer loaded from the folder
    gives the ids the model was trained on. ``model_max_length`` is the position-embedding
    count: without it transformers treats the length as unbounded and ``truncation=True`` cuts
    nothing. Accents are stripped exactly when lower-casing, as BERT's uncased models do.
    """
    from .tokenization import load_tokenizer

    folder = Path(folder)
    tokens = set(read_vocab(vocab))
    special = {role: tok for role, tok in SPECIAL_TOKEN_ROLES.items() if tok in tokens}
    load_tokenizer(vocab, lowercase=lowercase).save(str(folder / TOKENIZER_NAME))
    config = {
        "tokenizer_class": "BertTokenizer",  # transformers picks its fast variant from tokenizer.json
        "do_lower_case": lowercase,
        "strip_accents": lowercase,
        "tokenize_chinese_chars": True,
        "do_basic_tokenize": True,
        "never_split": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (folder / TOKENIZER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / SPECIAL_TOKENS_MAP_NAME).write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def model_config_dict(model: BertPreTrainedModel, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``model``: Hugging Face's model type and architecture, no keys that
    name another model, and ``id2label``/``label2id`` from ``labels`` when given (a classifier
    without them keeps consistent labels of its source, else ``LABEL_i``)."""
    cfg = model.config.to_dict()
    for key in FOREIGN_CONFIG_KEYS:
        cfg.pop(key, None)
    cfg.update({"model_type": "bert", "architectures": [HF_ARCHITECTURES[model.head]]})
    if labels:
        if model.head == "classification" and len(labels) != model.config.num_labels:
            raise CheckpointError(
                f"{len(labels)} label names ({', '.join(labels)}) for a classifier of {model.config.num_labels} classes"
            )
        cfg["id2label"] = {str(i): str(name) for i, name in enumerate(labels)}
        cfg["num_labels"] = len(labels)
    elif model.head == "classification":
        known = cfg.get("id2label")
        if not isinstance(known, Mapping) or len(known) != model.config.num_labels:
            cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.config.num_labels)}
    if "id2label" in cfg:
        cfg["label2id"] = {str(v): int(k) for k, v in cfg["id2label"].items()}
    return cfg


def save_model(
    model: BertPreTrainedModel,
    path: str | Path,
    *,
    vocab: str | Path | None = None,
    projection: nn.Linear | None = None,
    settings: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
    overwrite: bool = False,
    labels: Sequence[str] | None = None,
    lowercase: bool | None = None,
) -> Path:
    """Write ``model`` in Hugging Face layout (config.json, model.safetensors, vocab.txt and the
    tokenizer files: tokenizer_config.json, special_tokens_map.json, tokenizer.json).

    ``labels`` name the classes (config.json ``id2label``/``label2id``); ``lowercase`` is the
    tokenizer's lower-casing (default: the source folder's tokenizer files, else what the vocab
    implies). Extras: ``projection.safetensors`` (``fit_dense.weight``/``fit_dense.bias``) and
    ``distill.json`` (the stage's settings), plus ``extra_files`` (name -> source path, e.g. the
    training log) copied in. The folder is written next to its destination and
    renamed into place, so an interrupted save never leaves a folder that looks complete. An
    existing non-empty folder is replaced only with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path}: exists and is not empty; refusing to replace a finished model")
    if vocab is None:
        src = getattr(model, "source_dir", None)
        vocab = Path(src) / VOCAB_NAME if src is not None and (Path(src) / VOCAB_NAME).is_file() else None
    if vocab is not None:
        vocab = Path(vocab)
        check_vocab(vocab, model.config.vocab_size)
        if lowercase is None:
            lowercase = _resolve_lowercase(model, vocab)
    cfg = model_config_dict(model, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in _TIED_KEYS}
        save_file(state, str(tmp / SAFETENSORS_NAME), metadata={"format": "pt"})
        if vocab is not None:
            shutil.copyfile(vocab, tmp / VOCAB_NAME)
            write_tokenizer_files(tmp, vocab, bool(lowercase), model.config.max_position_embeddings)
        if projection is not None:
            proj = {f"fit_dense.{k}": v.detach().contiguous().cpu() for k, v in projection.state_dict().items()}
            save_file(proj, str(tmp / PROJECTION_NAME))
        if settings is not None:
            (tmp / SETTINGS_NAME).write_text(json.dumps(dict(settings), indent=2, sort_keys=True, default=str) + "\n")
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
