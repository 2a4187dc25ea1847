"""The stage registry: every stage function, the rules it serves and how its arguments are typed.

A stage is a plain function with typed keyword parameters (paths in, paths out, settings) and a
docstring whose ``Args:`` section documents each parameter. ``@stage`` registers it and makes it
accept plain values for its typed parameters (a mapping for a settings dataclass, a string for a
``Path``), so the three ways in share one conversion: a direct call, the CLI (generated from the
same signatures and docstrings, :mod:`bertdistill.cli`) and a Snakemake rule (whose ``input``,
``output`` and ``params`` names are the parameter names, :func:`bertdistill.launch.run_rule`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NewType, Union, get_args, get_origin, get_type_hints

from ..settings import SettingsError, from_mapping

TaskName = NewType("TaskName", str)
"""A task of :data:`bertdistill.tasks.TASKS` (the CLI offers them as choices)."""


class StageError(ValueError):
    """A stage called with arguments it does not take (or without one it needs)."""


@dataclass(frozen=True)
class Stage:
    """A registered stage.

    Attributes:
        name: its CLI sub-command (``python -m bertdistill <name>``)
        func: the undecorated function
        call: the registered function: converts plain values to the parameters' types, then calls func
        rules: the Snakemake rules that run it
        distributed: whether it can run as several processes under ``torchrun`` (``--nproc``)
    """

    name: str
    func: Callable[..., Any]
    call: Callable[..., Any]
    rules: tuple[str, ...]
    distributed: bool

    @functools.cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.func).parameters)

    @functools.cached_property
    def hints(self) -> dict[str, Any]:
        return {k: v for k, v in get_type_hints(self.func).items() if k != "return"}

    @functools.cached_property
    def docs(self) -> dict[str, str]:
        return doc_sections(self.func)

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.func) or "").split("\n\n")[0].replace("\n", " ")


STAGES: dict[str, Stage] = {}


def stage(name: str, rules: Sequence[str] = (), distributed: bool = False) -> Callable[[Callable], Callable]:
    """Register a stage function under CLI name ``name``, run by the Snakemake ``rules``."""

    def register(func: Callable) -> Callable:
        if name in STAGES:
            raise ValueError(f"stage {name!r} registered twice")

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = inspect.signature(func).bind(*args, **kwargs)
            except TypeError as e:
                raise StageError(f"stage {name}: {e}") from None
            hints = entry.hints
            return func(**{k: convert(v, hints.get(k, Any), k) for k, v in bound.arguments.items()})

        entry = Stage(name, func, call, tuple(rules), distributed)
        STAGES[name] = entry
        call.stage = entry  # type: ignore[attr-defined]
        return call

    return register


def for_rule(rule: str) -> Stage:
    """The stage a Snakemake rule runs."""
    for s in STAGES.values():
        if rule in s.rules:
            return s
    raise StageError(f"rule {rule!r} runs no registered stage; add it to the rules of its @stage")


# ----------------------------------------------------------------------------------------------
# Types


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(``X``, True) for ``X | None``; (hint, False) otherwise."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) < len(get_args(hint)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return hint, False


def is_settings(hint: Any) -> bool:
    """A settings dataclass (given as one mapping, or field by field on the command line)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def convert(value: Any, hint: Any, what: str = "") -> Any:
    """``value`` as the parameter's type: mappings become settings dataclasses, strings
    ``Path``; everything else passes unchanged."""
    if value is None:
        return None
    hint, _ = unwrap_optional(hint)
    if is_settings(hint):
        return from_mapping(hint, value, what)
    if hint is Path:
        return Path(value)
    if get_origin(hint) in (list, Sequence) and get_args(hint) and get_args(hint)[0] is Path:
        if isinstance(value, (str, Path)):
            raise SettingsError(f"{what}: expected a list of paths, got {value!r}")
        return [Path(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Docstrings


def doc_sections(obj: Any) -> dict[str, str]:
    """Parameter (``Args:``) or field (``Attributes:``) descriptions of a Google-style docstring."""
    doc = inspect.getdoc(obj) or ""
    out: dict[str, str] = {}
    section = re.search(r"^(?:Args|Attributes):\n((?:[ \t]+.*\n?|\n)*)", doc, re.M)
    if section is None:
        return out
    current = None
    for line in section.group(1).splitlines():
        m = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith("      ") and line.strip():
            out[current] += " " + line.strip()
    return out


def dataclass_fields(cls: type) -> dict[str, tuple[Any, Any, str]]:
    """Field name -> (type hint, default or MISSING, description) of a settings dataclass."""
    hints = get_type_hints(cls)
    docs = doc_sections(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = (hints[f.name], default, docs.get(f.name, ""))
    return out


def describe(value: Any) -> Mapping[str, Any] | Any:
    """A settings dataclass as a plain dict (for records); other values unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
