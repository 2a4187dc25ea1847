"""``python -m bertdistill <stage> ...``: every stage without Snakemake.

The sub-commands and their options are generated from the stage functions (signature, type
hints, the ``Args:`` section of the docstring; :mod:`bertdistill.stages`), so the CLI accepts
exactly what the rules pass and cannot drift from them. Option names are the parameter names
(``dev_features`` -> ``--dev-features``; underscores work too). A settings group (``train``,
``losses``, ``settings``) is given whole as YAML/JSON (``--train '{max_steps: 100, lr: 1e-4}'``,
or ``--train @train.yaml``) and/or field by field (``--train.lr 2e-4``). Mappings such as
``source`` take YAML/JSON too, or a bare path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from . import __version__
from .launch import WORKER, run_stage
from .settings import literal_choices
from .snapshots import clear_snapshots
from .stages import STAGES, Stage
from .stages.registry import TaskName, dataclass_fields, is_settings, unwrap_optional

NULLS = ("null", "none", "None", "~")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: ``1e-4`` is a number (PyYAML alone reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    """A YAML/JSON value, or the contents of a YAML/JSON file given as ``@path``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{text[1:]}: cannot read ({e.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {text!r:.60} ({str(e).splitlines()[0]})") from None


def _mapping(text: str) -> Any:
    """A mapping as YAML/JSON (or ``@file``); a bare path means ``{path: ...}``."""
    value = _yaml(text)
    if isinstance(value, str):
        return {"path": value}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping, got {text!r:.60}")
    return value


def _mappings(text: str) -> list[Any]:
    """One mapping or a YAML/JSON list of them (bare paths mean ``{path: ...}``)."""
    value = _yaml(text)
    items = value if isinstance(value, list) else [value]
    out = [{"path": v} if isinstance(v, str) else v for v in items]
    if not all(isinstance(v, dict) for v in out):
        raise argparse.ArgumentTypeError(f"expected mappings, got {text!r:.60}")
    return out


def _scalar(base: Any, optional: bool) -> Callable[[str], Any]:
    """A parser for one value of type ``base`` (``null`` allowed when ``optional``)."""

    def parse(text: str) -> Any:
        if optional and text in NULLS:
            return None
        if base in (str, Path, TaskName):
            return text
        if base in (int, float):
            try:
                return base(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
        return _yaml(text)

    parse.__name__ = getattr(base, "__name__", "value")  # argparse names the type in its errors
    return parse


def _is_mapping(hint: Any) -> bool:
    return get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping)


def _add_option(group: Any, flag: str, dest: str, hint: Any, help_text: str, required: bool, default: Any) -> None:
    """One option for a value of type ``hint``."""
    base, optional = unwrap_optional(hint)
    kw: dict[str, Any] = {"dest": dest, "help": help_text, "default": default}
    choices = literal_choices(hint)
    if base is TaskName:
        from .tasks import TASKS

        choices = tuple(TASKS)
    if base is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif choices is not None:
        kw.update(choices=list(choices), type=_scalar(str, optional), metavar="{" + ",".join(map(str, choices)) + "}")
    elif get_origin(base) is list and get_args(base) and get_args(base)[0] is Path:
        kw.update(nargs="+", metavar="PATH")
    elif get_origin(base) is list and get_args(base) and get_args(base)[0] in (str, int, float):
        item = get_args(base)[0]
        kw.update(nargs="+", type=_scalar(item, False), metavar={int: "N", float: "X"}.get(item, "TEXT"))
    elif get_origin(base) is list:
        kw.update(nargs="+", type=_mappings, metavar="YAML")
    elif _is_mapping(base):
        kw.update(type=_mapping, metavar="YAML")
    elif any(_is_mapping(a) for a in get_args(base)):  # e.g. a path or an inline mapping
        kw.update(type=_yaml, metavar="PATH|YAML")
    else:
        metavar = {Path: "PATH", int: "N", float: "X", str: "TEXT"}.get(base, "YAML")
        kw.update(type=_scalar(base, optional), metavar=metavar)
    if required:
        kw["required"] = True
    group.add_argument(flag, **{k: v for k, v in kw.items() if v is not None or k == "default"})


def _add_stage(sub: Any, entry: Stage) -> None:
    doc = entry.func.__doc__ or ""
    description = doc.split("\n    Args:")[0].strip().replace("\n    ", "\n")
    p = sub.add_parser(
        entry.name, help=entry.summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.set_defaults(_stage=entry.name)
    for name, param in entry.parameters.items():
        hint = entry.hints[name]
        help_text = entry.docs.get(name, "")
        base, _ = unwrap_optional(hint)
        if is_settings(base):
            g = p.add_argument_group(f"{name} ({base.__name__}): give --{_kebab(name)} YAML and/or the fields")
            g.add_argument(
                f"--{_kebab(name)}",
                dest=name,
                type=_mapping,
                metavar="YAML",
                default=None,
                help=f"{help_text}: a YAML/JSON mapping of the fields below, or @file",
            )
            for field, (fhint, fdefault, fdoc) in dataclass_fields(base).items():
                shown = "" if fdefault is None else f" (default: {fdefault})"
                _add_option(
                    g,
                    f"--{_kebab(name)}.{_kebab(field)}",
                    f"{name}.{field}",
                    fhint,
                    fdoc + shown,
                    False,
                    argparse.SUPPRESS,
                )
            continue
        required = param.default is param.empty and not unwrap_optional(hint)[1]
        if param.default not in (param.empty, None):
            help_text += f" (default: {param.default})"
        _add_option(p, f"--{_kebab(name)}", name, hint, help_text, required, None)
    if entry.distributed:
        p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node; > 1 runs under torchrun")


class _Parser(argparse.ArgumentParser):
    """Accepts ``--dev_features`` and ``--train.max_steps`` for ``--dev-features`` and ``--train.max-steps``."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102
        return super().parse_known_args(_normalize(sys.argv[1:] if args is None else args), namespace)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every stage, generated from :data:`bertdistill.stages.STAGES`."""
    p = _Parser(
        prog="bertdistill",
        description="Distil a BERT teacher into a small student. Each stage below is also a Snakemake rule; "
        "`bertdistill STAGE --help` lists its options. `bertdistill inspect PATH` describes a file or "
        "folder; `bertdistill predict FOLDER` answers or classifies with a final model.",
    )
    p.add_argument("--version", action="version", version=f"bertdistill {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for entry in STAGES.values():
        _add_stage(sub, entry)
    return p


def _normalize(argv: Sequence[str]) -> list[str]:
    """``--dev_features`` and ``--train.max_steps`` as ``--dev-features`` and ``--train.max-steps``."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = flag.replace("_", "-") + eq + value
        out.append(arg)
    return out


def _unrecognized(parser: argparse.ArgumentParser, stage: str, extras: Sequence[str]) -> str:
    """argparse's "unrecognized arguments", or, for ``--GROUP.FIELD`` of a settings group, the fields it has."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
    for arg in _normalize(extras):
        flag = arg.partition("=")[0]
        group = flag.split(".", 1)[0]
        fields = sorted(o[len(group) + 1 :] for o in sub._option_string_actions if o.startswith(group + "."))
        if flag.startswith("--") and "." in flag and fields:
            return f"{flag}: {group} has no field {flag[len(group) + 1 :]}; its fields: {', '.join(fields)}"
    return f"unrecognized arguments: {' '.join(extras)}"


def stage_kwargs(entry: Stage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The parsed options as the stage's keyword arguments (settings merged from YAML and fields)."""
    values = vars(args)
    kwargs: dict[str, Any] = {}
    for name, param in entry.parameters.items():
        base, _ = unwrap_optional(entry.hints[name])
        if is_settings(base):
            merged = dict(values.get(name) or {})
            merged.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{name}.")})
            if merged or values.get(name) is not None:
                kwargs[name] = merged
            elif param.default is param.empty:
                try:  # every field has a default: the dataclass's defaults
                    base()
                    kwargs[name] = {}
                except (TypeError, ValueError):
                    parser.error(f"{entry.name}: give --{_kebab(name)} (YAML) or --{_kebab(name)}.FIELD options")
            continue
        value = values.get(name)
        if isinstance(value, list) and get_origin(base) is list and get_args(base)[0] is not Path:
            value = [v for item in value for v in item]  # each option value is a list of mappings
        if value is not None or param.default is param.empty:
            kwargs[name] = value
    return kwargs


def _inspect(argv: Sequence[str]) -> int:
    """``bertdistill inspect PATH...``: one JSON object per path (not a stage: it writes nothing)."""
    from .inspection import inspect_path

    p = argparse.ArgumentParser(
        prog="bertdistill inspect",
        description="What a model folder, checkpoint, HDF5 shard, feature file, teacher-logit cache, Parquet "
        "shard, SQuAD JSON or GLUE TSV is: format, shapes, config, counts.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    status = 0
    for path in args.paths:
        try:
            print(json.dumps(inspect_path(path), indent=2))
        except ValueError as e:  # CheckpointError, TaskError, SquadError: one line naming the file
            print(f"bertdistill inspect: error: {e}", file=sys.stderr)
            status = 2
    return status


def _predict(argv: Sequence[str]) -> int:
    """``bertdistill predict FOLDER``: answers (QA) or labels (classification), one JSON per line."""
    from .predict import predict, read_inputs

    p = argparse.ArgumentParser(
        prog="bertdistill predict",
        description="Answer questions over a context, or classify texts, with a model folder (results/{task}_final "
        "or results/{task}_model). Inputs from options or a JSONL/TSV file; one JSON object per line out.",
    )
    p.add_argument("model", type=Path, help="a model folder with its task head (results/{task}_final or _model)")
    p.add_argument("--question", help="QA: the question (with --context)")
    p.add_argument("--context", help="QA: the paragraph to answer from")
    p.add_argument("--text", action="append", default=[], help="classification: a text (repeat for several)")
    p.add_argument("--text-b", help="classification: the second text of a pair (with one --text)")
    p.add_argument("--input", type=Path, help="JSONL ({question, context} or {text[, text_b]}) or TSV with a header")
    p.add_argument("--max-seq-length", type=int, help="tokens per window (default: QA 384, classification 128)")
    p.add_argument("--doc-stride", type=int, default=128, help="QA: stride between context windows")
    p.add_argument("--max-query-length", type=int, default=64, help="QA: question tokens kept at most")
    p.add_argument("--n-best", type=int, default=20, help="QA: start/end candidates searched per window")
    p.add_argument("--max-answer-length", type=int, default=30, help="QA: longest answer in tokens")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--cased",
        action="store_true",
        help="do not lower-case (default: as the folder's tokenizer_config.json says, else lower-case)",
    )
    args = p.parse_args(argv)
    try:
        records: list[dict] = read_inputs(args.input) if args.input else []
        if args.question or args.context:
            records.append({"question": args.question, "context": args.context})
        if args.text_b and len(args.text) != 1:
            p.error("--text-b pairs with exactly one --text")
        records += [{"text": t, **({"text_b": args.text_b} if args.text_b else {})} for t in args.text]
        if not records:
            p.error("give --question and --context, --text, or --input")
        results = predict(
            args.model,
            records,
            args.max_seq_length,
            args.doc_stride,
            args.max_query_length,
            args.n_best,
            args.max_answer_length,
            args.batch_size,
            lowercase=False if args.cased else None,
        )
    except ValueError as e:  # CheckpointError and our input errors: one line naming the file
        print(f"bertdistill predict: error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER]:  # a torchrun worker: the stage's plain keyword arguments in a JSON file
        STAGES[argv[1]].call(**json.loads(Path(argv[2]).read_text()))
        return 0
    if argv[:1] == ["inspect"]:
        return _inspect(argv[1:])
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(_unrecognized(parser, args.stage, extras))
    entry = STAGES[args._stage]
    kwargs = stage_kwargs(entry, args, parser)
    try:
        result = run_stage(entry.name, kwargs, nproc=getattr(args, "nproc", 1))
    except (ValueError, FileExistsError) as e:  # our errors (CheckpointError, ShardError, ...) are ValueErrors
        print(f"bertdistill {entry.name}: error: {e}", file=sys.stderr)
        return 2
    # A training stage keeps its final snapshot for a scheduler that may still delete its output
    # (bertdistill.snapshots); run from the command line, the output is final once it returns.
    if "snapshot_dir" in entry.parameters:
        clear_snapshots(Path(kwargs["output"]), kwargs.get("snapshot_dir"))
    print(json.dumps(result, indent=2, default=str) if isinstance(result, (dict, list)) else result)
    return 0
