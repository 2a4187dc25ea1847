"""Workflow configuration helpers (used by the Snakefile before schema validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


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
    """What the schema cannot say: every configured task is registered (bertdistill.tasks.TASKS)
    and names the teachers it uses."""
    from .tasks import get_task

    for name, task in config.get("tasks", {}).items():
        get_task(name)
        teacher = task.get("teacher")
        if teacher != "finetune" and teacher not in config["teachers"]:
            raise ValueError(
                f"tasks.{name}.teacher: {teacher!r} is not in `teachers` ({', '.join(config['teachers'])}); "
                "name a configured teacher or `finetune`"
            )
