"""``config/README.md`` generated from ``schemas/config.schema.yaml``: every key, its type, default
and description, in the workflow catalog's convention (a config README next to the config).

The schema is the one source: a test regenerates this text and compares it with the file, so the
two cannot drift. Regenerate with ``python -m bertdistill.config_docs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
README = ROOT / "config" / "README.md"

HEADER = """\
# Configuration

Generated from `schemas/config.schema.yaml` by `python -m bertdistill.config_docs`; do not edit
by hand (`tests/test_config.py` checks that the two agree).

`config/config.yaml` is the embedded default: it runs the whole workflow offline on 2 CPU cores.
`config/recipes/nvidia-4l-312d.yaml` is the reference recipe on 8 GPUs. Pass another file with
`snakemake --configfile FILE`, or single keys with `--config key=value`. The schema validates
every run before any job starts, and fills in the defaults below. Walk-through:
[docs/configuration.md](../docs/configuration.md).

Keys are written as paths; `<name>` stands for a name you choose (a teacher, a task, a shape).
Blocks used in several places (a training run, a data source) are described once, under
[Shared blocks](#shared-blocks).
"""


def _ref_name(node: Mapping[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type(node: Mapping[str, Any]) -> str:
    name = _ref_name(node)
    if name:
        return f"[{name}](#{name.replace('_', '-')})"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_type(sub) for sub in node.get("oneOf", node.get("anyOf", [])))
    t = node.get("type", "")
    types = [t] if isinstance(t, str) else list(t)
    if "array" in types and isinstance(node.get("items"), Mapping):
        types = [f"list of {_type(node['items'])}" if x == "array" else x for x in types]
    return " or ".join(types) or "any"


def _default(node: Mapping[str, Any]) -> str:
    if "default" not in node:
        return ""
    text = json.dumps(node["default"])
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(node: Mapping[str, Any], path: str, required: set[str]) -> Iterator[str]:
    """One table row per key below ``node`` (an object schema), depth first; a shared block is
    one row that links to its section."""
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        req = " (required)" if key in required else ""
        yield f"| `{here}` | {_type(sub)} | {_default(sub)} | {_cell(sub.get('description', ''))}{req} |"
        if _ref_name(sub) is None:
            yield from _rows(sub, here, set(sub.get("required", [])))
            for alt in sub.get("oneOf", []):
                yield from _rows(alt, here, set(alt.get("required", [])))
            items = sub.get("additionalProperties")
            if isinstance(items, Mapping) and (items.get("properties") or _ref_name(items)):
                yield from _entry_rows(items, f"{here}.<name>")
    extra = node.get("additionalProperties")
    if not path and isinstance(extra, Mapping):
        yield from _entry_rows(extra, "<name>")


def _entry_rows(node: Mapping[str, Any], path: str) -> Iterator[str]:
    if _ref_name(node):
        yield f"| `{path}` | {_type(node)} | | {_cell(node.get('description', 'one entry'))} |"
    else:
        yield from _rows(node, path, set(node.get("required", [])))


TABLE = "| key | type | default | description |\n|---|---|---|---|"


def config_reference(schema: Mapping[str, Any]) -> str:
    """The text of ``config/README.md`` for ``schema`` (the parsed config schema)."""
    parts = [HEADER.rstrip()]
    for key, node in schema["properties"].items():
        rows = _rows({"properties": {key: node}}, "", set(schema.get("required", [])))
        parts.append(f"## `{key}`\n\n{_cell(node.get('description', ''))}\n\n{TABLE}\n" + "\n".join(rows))
    parts.append("## Shared blocks")
    for name, node in schema["$defs"].items():
        anchor = name.replace("_", "-")
        parts.append(f'### {name}<a id="{anchor}"></a>\n\n{_cell(node.get("description", ""))}')
        rows = list(_rows(node, "", set(node.get("required", []))))
        if rows:
            parts.append(f"{TABLE}\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


def missing_descriptions(schema: Mapping[str, Any]) -> list[str]:
    """Paths of schema keys without a description (every key must have one)."""
    missing: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, Mapping):
            return
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, Mapping) and not sub.get("description"):
                missing.append(f"{path}.{key}".lstrip("."))
            walk(sub, f"{path}.{key}")
        for key in ("oneOf", "anyOf"):
            for i, sub in enumerate(node.get(key, [])):
                walk(sub, f"{path}[{key}{i}]")
        for key in ("additionalProperties", "items"):
            walk(node.get(key), f"{path}.<{key}>")

    walk(schema, "")
    for name, node in schema.get("$defs", {}).items():
        walk(node, f"$defs.{name}")
    return missing


def schema_keys(schema: Mapping[str, Any]) -> Iterator[str]:
    """Every key name the schema defines (properties at any depth)."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, Mapping):
            for key, sub in node.get("properties", {}).items():
                yield key
                yield from walk(sub)
            for key, sub in node.items():
                if key != "properties":
                    yield from walk(sub)
        elif isinstance(node, list):
            for sub in node:
                yield from walk(sub)

    return walk(schema)


def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    README.write_text(config_reference(load_schema()), encoding="utf-8")
    print(f"wrote {README}")
