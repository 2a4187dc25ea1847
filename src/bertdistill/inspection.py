"""``bertdistill inspect PATH``: what a file or folder of this workflow is, as one JSON object.

Model folders (ours or Hugging Face), NGC/pickled/safetensors checkpoints, HDF5 pre-training
shards, task feature files and teacher-logit caches, LDDL Parquet shards, SQuAD JSON (original
or augmented) and GLUE TSV files: format, shapes, config and counts, read without running code
and without loading whole tensors where the format allows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")
HEADS = {"cls.predictions.": "mlm", "classifier.": "classification", "qa_outputs.": "qa"}


def _plain(value: Any) -> Any:
    """HDF5 attributes and NumPy scalars as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _state_summary(state: Mapping[str, Any]) -> dict[str, Any]:
    from .checkpoints import normalize_keys

    state = normalize_keys(state)
    layers = {int(m.group(1)) for k in state if (m := _LAYER.search(k))}
    words = next((v for k, v in state.items() if k.endswith("word_embeddings.weight")), None)
    return {
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in state.values()}),
        "layers": max(layers) + 1 if layers else 0,
        "vocab_size": int(words.shape[0]) if words is not None else None,
        "hidden_size": int(words.shape[1]) if words is not None else None,
        "heads": sorted({h for prefix, h in HEADS.items() if any(k.startswith(prefix) for k in state)}),
    }


def _model_folder(path: Path) -> dict[str, Any]:
    from .checkpoints import _find_weights, read_config, read_state_dict

    config = read_config(path / "config.json")
    weights = _find_weights(path)
    out: dict[str, Any] = {
        "format": "model folder",
        "config": {
            k: getattr(config, k)
            for k in (
                "num_hidden_layers",
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
                "vocab_size",
                "max_position_embeddings",
            )
        },
        "weights": {"file": weights.name, **_state_summary(read_state_dict(weights))},
        "files": {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()},
    }
    if (path / "vocab.txt").is_file():
        out["vocab_entries"] = sum(1 for _ in (path / "vocab.txt").open(encoding="utf-8"))
    id2label = json.loads((path / "config.json").read_text()).get("id2label")
    if isinstance(id2label, dict):
        out["labels"] = [id2label[k] for k in sorted(id2label, key=int)]
    if (path / "tokenizer_config.json").is_file():
        tok = json.loads((path / "tokenizer_config.json").read_text())
        out["tokenizer"] = {k: tok.get(k) for k in ("tokenizer_class", "do_lower_case", "model_max_length")}
    for record in ("distill.json", "metrics.json"):
        if (path / record).is_file():
            data = json.loads((path / record).read_text())
            keep = ("stage", "selection", "split", "metric", "student", "teacher", "retention", "wall_s")
            out[record] = {k: data[k] for k in keep if k in data}
    return out


def _hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            datasets = {k: {"shape": list(f[k].shape), "dtype": str(f[k].dtype)} for k in f}
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    if "teacher_logits" in datasets:
        kind = "teacher-logit cache"
    elif "masked_lm_positions" in datasets or "next_sentence_labels" in datasets:
        kind = "pre-training shard"
    elif "input_ids" in datasets:
        kind = "task features"
    else:
        kind = "HDF5 file"
    first = next(iter(datasets.values()), {"shape": [0]})
    rows = first["shape"][0] if first["shape"] else 0
    return {"format": kind, "rows": rows, "datasets": datasets, "attrs": attrs}


def _parquet(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    return {
        "format": "Parquet (LDDL pre-training shard)" if "A" in f.schema_arrow.names else "Parquet",
        "rows": f.metadata.num_rows,
        "row_groups": f.metadata.num_row_groups,
        "columns": f.schema_arrow.names,
    }


def _squad(path: Path) -> dict[str, Any]:
    from .data.squad import load_squad_json

    data = load_squad_json(path)
    paragraphs = [p for a in data for p in a["paragraphs"]]
    qas = [qa for p in paragraphs for qa in p["qas"]]
    out = {
        "format": "SQuAD v1.1 JSON",
        "articles": len(data),
        "paragraphs": len(paragraphs),
        "questions": len(qas),
        "answers": sum(len(qa.get("answers", [])) for qa in qas),
    }
    stats = path.with_name(path.name + ".stats.json")
    if stats.is_file():
        out["augmentation"] = json.loads(stats.read_text())
    return out


def _tsv(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        rows = sum(1 for line in f if line.strip())
    out: dict[str, Any] = {"format": "GLUE TSV", "columns": header, "rows": rows}
    stats = path.with_name(path.name + ".stats.json")
    if stats.is_file():
        out["augmentation"] = json.loads(stats.read_text())
    return out


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of ``path``; an unknown or unreadable path is a one-line ValueError."""
    from .checkpoints import read_state_dict

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            out = _model_folder(path)
        else:
            members = sorted(p for p in path.iterdir() if p.suffix in (".hdf5", ".h5", ".parquet"))
            if not members:
                raise ValueError(f"{path}: neither a model folder (config.json) nor a folder of shards")
            out = {"format": "folder of shards", "files": {p.name: inspect_path(p) for p in members}}
    elif path.suffix in (".hdf5", ".h5"):
        out = _hdf5(path)
    elif path.suffix == ".parquet":
        out = _parquet(path)
    elif path.suffix in (".pt", ".bin", ".safetensors"):
        out = {"format": f"checkpoint ({path.suffix.lstrip('.')})", **_state_summary(read_state_dict(path))}
    elif path.suffix == ".zip":  # an NGC download: what it holds (import_teacher unpacks it)
        import zipfile

        with zipfile.ZipFile(path) as z:
            out = {"format": "zip archive", "members": {i.filename: i.file_size for i in z.infolist()}}
    elif path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: malformed JSON ({e})") from None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            out = _squad(path)
        else:
            out = {"format": "JSON", "keys": sorted(doc) if isinstance(doc, dict) else f"list of {len(doc)}"}
    elif path.suffix == ".tsv":
        out = _tsv(path)
    else:
        raise ValueError(
            f"{path}: unknown kind of file (model folder, .hdf5, .parquet, .pt/.bin/.safetensors/.zip, .json or .tsv)"
        )
    return {"path": str(path), "bytes": _size(path), **out}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
