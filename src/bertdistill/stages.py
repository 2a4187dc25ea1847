"""One function per workflow stage: typed paths in, paths out, settings.

``scripts/<stage>.py`` maps the ``snakemake`` object onto these, and ``python -m bertdistill``
maps argv onto them, so a stage runs the same with or without Snakemake.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import assets
from .checkpoints import (
    CONFIG_NAME,
    VOCAB_NAME,
    CheckpointError,
    load_model,
    read_config,
    save_model,
)
from .model import BertConfig


def _find_checkpoint(folder: Path) -> Path:
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


def import_teacher(
    source: Mapping[str, Any],
    output: str | Path,
    head: str | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    vocab: str | Path | None = None,
    download_dir: str | Path = "resources/downloads",
) -> Path:
    """Resolve a teacher checkpoint (path, URL+sha256 or package) and write it in our layout.

    Accepts Hugging Face folders, NGC ``.pt`` files and zips, and our own folders. ``config`` (a
    path or a mapping of BERT config fields) and ``vocab`` supply what NGC downloads lack. The
    result is a Hugging Face folder (config.json, model.safetensors, vocab.txt) plus
    ``distill.json`` recording where it came from.
    """
    local = assets.resolve_local(source, download_dir)
    with tempfile.TemporaryDirectory() as tmp:
        local = assets.unpack_if_archive(local, Path(tmp))
        ckpt = _find_checkpoint(local) if local.is_dir() and not (local / CONFIG_NAME).is_file() else local
        if isinstance(config, Mapping):
            cfg: BertConfig | None = BertConfig.from_dict(dict(config))
        elif config is not None:
            cfg = read_config(config)
        else:
            cfg = None
        model = load_model(ckpt, head=head, config=cfg)
        folder = ckpt if ckpt.is_dir() else ckpt.parent
        vocab_path = Path(vocab) if vocab else folder / VOCAB_NAME
        if not vocab_path.is_file():
            raise CheckpointError(f"{vocab_path}: missing; set 'vocab' for this teacher in the config")
        settings = {
            "stage": "import_teacher",
            "source": dict(source),
            "head": head,
            "parameters": model.num_parameters(),
        }
        return save_model(model, output, vocab=vocab_path, settings=settings, overwrite=True)


def save_trained(
    objective: Any,
    result: Any,
    output: str | Path,
    train_config: Any,
    settings: Mapping[str, Any] | None = None,
    vocab: str | Path | None = None,
) -> Path:
    """Write a trained student (and its projection) with the run's settings and checkpoint
    selection in ``distill.json``. Called once training has completed, so the declared output
    appears only for a finished stage (``save_model`` renames it into place)."""
    import dataclasses

    record = {
        **dict(settings or {}),
        "train": dataclasses.asdict(train_config),
        "selection": result.selection,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "wall_s": round(result.wall_s, 3),
        "final_loss_terms": result.last_terms,
    }
    return save_model(objective.student, output, vocab=vocab, projection=objective.projection,
                      settings=record, overwrite=True)


def describe_model(model_dir: str | Path, output: str | Path) -> dict[str, Any]:
    """Write a JSON summary of a model folder (config, parameter counts) and return it."""
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    cfg = model.config
    emb = sum(p.numel() for p in model.embeddings.parameters())
    per_layer = sum(p.numel() for p in model.encoder.layer[0].parameters())
    summary = {
        "model": str(model_dir),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "parameters": model.num_parameters(),
        "embedding_parameters": emb,
        "parameters_per_layer": per_layer,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
