"""The model card (``README.md``) of a Hub-ready student folder, written from the run's records.

Every figure on the card is read from a record the workflow already wrote: ``metrics.json`` of
the final folder (metrics on the reported split and dev, baselines, parameter counts, checkpoint
selection), each stage's ``distill.json`` (training settings, steps, losses), the feature files'
attributes (split sizes, sequence length, lower-casing), the augmentation statistics, the
export's ``export.json`` (the INT8 graph's metric) and the benchmark's ``summary.json`` (speed).
Nothing is estimated: a record that is missing makes its line say "not recorded" or "not
measured". :func:`collect` gathers the facts, :func:`render` writes the card from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# What a Hub upload of the student holds, and all that results/{task}_model holds: the model, its
# tokenizer, the card. (Here, not in checkpoints: the Snakefile reads it without importing torch.)
MODEL_FILES = (
    "README.md",
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
NOT_RECORDED = "not recorded"
# Hub pipeline tags by model head.
PIPELINE_TAGS = {"classification": "text-classification", "qa": "question-answering"}
TASK_KINDS = {"classification": "Text Classification", "qa": "Question Answering"}
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "qa": "AutoModelForQuestionAnswering"}
METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match", "f1": "F1"}
# How far the teacher's provenance is followed through distill.json records (fine-tuned from
# imported from ...): a loop of records must not hang the stage.
MAX_ORIGIN_DEPTH = 5


# ----------------------------------------------------------------------------------------------
# Reading records


def read_json(path: str | Path | None) -> dict[str, Any]:
    """A JSON object from ``path``; empty when there is no such file (a record not written)."""
    if path is None or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def stage_record(folder: str | Path | None) -> dict[str, Any]:
    """The ``distill.json`` a training stage wrote into its folder (empty when absent)."""
    return read_json(Path(folder) / "distill.json") if folder is not None else {}


def h5_attrs(path: str | Path | None) -> dict[str, Any]:
    """The attributes of an HDF5 file (feature file or shard), JSON strings decoded; empty when
    the file is absent or unreadable."""
    if path is None or not Path(path).is_file():
        return {}
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def training(record: Mapping[str, Any]) -> dict[str, Any]:
    """The key settings of a training stage from its ``distill.json``: steps run, epochs or step
    budget, examples per optimizer step, learning rate and schedule, optimizer, precision."""
    train = record.get("train") or {}
    if not train:
        return {}
    world = int(record.get("world_size") or 1)
    batch = train.get("global_batch_size") or train.get("batch_size", 0) * train.get("grad_accum", 1) * world
    return {
        "steps": record.get("steps"),
        "epochs": train.get("epochs"),
        "max_steps": train.get("max_steps"),
        "batch": batch,
        "lr": train.get("lr"),
        "schedule": train.get("schedule"),
        "warmup": train.get("warmup"),
        "optimizer": train.get("optimizer"),
        "precision": train.get("precision"),
        "teacher_dropout": train.get("teacher_dropout"),
        "processes": world,
        "wall_s": record.get("wall_s"),
    }


def shard_seq_length(shards: Sequence[str]) -> int | None:
    """Sequence length of a general phase's shards: the first shard's ``max_seq_length``
    attribute, else the ``seq{N}`` folder the workflow writes them to."""
    for shard in shards[:1]:
        length = h5_attrs(shard).get("max_seq_length")
        if length is not None:
            return int(length)
        m = re.search(r"seq(\d+)", str(shard))
        if m:
            return int(m.group(1))
    return None


def teacher_origin(teacher: str | Path) -> list[dict[str, Any]]:
    """The teacher's provenance, newest first: each folder's ``distill.json`` (fine-tuned from,
    imported from), followed through its ``teacher`` entry while the folder exists."""
    chain: list[dict[str, Any]] = []
    folder: Path | None = Path(teacher)
    while folder is not None and len(chain) < MAX_ORIGIN_DEPTH:
        record = stage_record(folder)
        if not record:
            break
        chain.append({"folder": folder.name, **record})
        parent = record.get("teacher")
        folder = Path(parent) if parent and Path(parent).is_dir() and Path(parent) != folder else None
    return chain


def config_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """Layers, hidden width, heads, feed-forward width, vocabulary and positions of a config.json."""
    return {
        "layers": config.get("num_hidden_layers"),
        "hidden": config.get("hidden_size"),
        "heads": config.get("num_attention_heads"),
        "intermediate": config.get("intermediate_size"),
        "vocab": config.get("vocab_size"),
        "positions": config.get("max_position_embeddings"),
    }


def split_size(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Examples and features of a feature file, and the data file they came from (its name only:
    a local path says nothing to a reader of the card)."""
    if not attrs:
        return {}
    return {
        "examples": attrs.get("examples"),
        "features": attrs.get("features"),
        "source": Path(str(attrs["source"])).name if attrs.get("source") else None,
    }


def benchmark_rows(summary: Mapping[str, Any], task: str) -> dict[str, Any]:
    """This task's student and teacher in the benchmark: per batch and sequence length the best
    fp32 backend of each side and their ratio, and the machine. Empty when it was not measured."""
    rows = [h for h in summary.get("headline", []) if h.get("pair") == task and h.get("best_fp32")]
    if not rows:
        return {}
    machine = summary.get("machine", {})
    return {
        "rows": [
            {"batch": h["batch"], "seq": h["seq"], **{k: h["best_fp32"][k] for k in sorted(h["best_fp32"])}}
            for h in sorted(rows, key=lambda h: (h["seq"], h["batch"]))
        ],
        "machine": {k: machine.get(k) for k in ("cpu", "cpu_isa", "cpu_count", "threads", "gpu")},
        "iterations": summary.get("settings", {}).get("iterations"),
        "pair": summary.get("pairs", {}).get(task, {}),
    }


# ----------------------------------------------------------------------------------------------
# Facts


def collect(
    task: Any,
    final: Path,
    teacher: Path,
    config: Mapping[str, Any],
    lowercase: bool,
    *,
    license: str | None = None,
    base_model: str | None = None,
    prediction: Path | None = None,
    backbone: Path | None = None,
    general: Sequence[Path] = (),
    features: Path | None = None,
    dev_features: Path | None = None,
    test_features: Path | None = None,
    augmented: Path | None = None,
    augment: Mapping[str, Any] | None = None,
    export: Path | None = None,
    benchmark: Path | None = None,
) -> dict[str, Any]:
    """Every fact the card states, from the records (see the module docstring).

    Args:
        task: the task (:func:`bertdistill.tasks.get_task`)
        final: the final folder (``metrics.json``, ``distill.json``)
        teacher: the task teacher's folder
        config: the student's config.json as written to the model folder
        lowercase: the tokenizer's lower-casing
        license: the card's license (None: the teacher's, from its source's card, else ``other``)
        base_model: Hub id for ``base_model`` (None: left out)
        prediction: the prediction stage's folder
        backbone: the backbone stage's folder
        general: the general-distillation folders the student went through
        features: training features
        dev_features: dev features
        test_features: test features
        augmented: the augmentation statistics (``train_aug.*.stats.json``)
        augment: the augmentation settings (n, m, p, max_texts)
        export: the export folder (``export.json``)
        benchmark: the benchmark folder (``summary.json``)
    """
    metrics = read_json(final / "metrics.json")
    origin = teacher_origin(teacher)
    imported = next((r for r in origin if r.get("stage") == "import_teacher"), {})
    source_license = (imported.get("source_card") or {}).get("license")
    teacher_config = read_json(teacher / "config.json")
    general_phases = []
    for folder in general:
        record = stage_record(folder)
        general_phases.append(
            {
                "name": record.get("stage", Path(folder).name),
                "teacher": Path(str(record["teacher"])).name if record.get("teacher") else None,
                "examples": record.get("examples"),
                "seq": shard_seq_length(record.get("shards") or []),
                "losses": record.get("losses"),
                "student": record.get("student") or {},
                "train": training(record),
            }
        )
    prediction_record = stage_record(prediction)
    backbone_record = stage_record(backbone)
    train_attrs = h5_attrs(features)
    export_record = read_json(export / "export.json") if export is not None else {}
    student_export = export_record.get("models", {}).get("student", {})
    summary = read_json(benchmark / "summary.json") if benchmark is not None else {}
    finetuned = next((r for r in origin if str(r.get("stage", "")).startswith("finetune")), None)
    return {
        "task": task.name,
        "head": task.head,
        "metric": task.metric,
        "labels": list(task.label_names),
        "license": license or source_license or "other",
        "license_from": "config" if license else "teacher" if source_license else None,
        "base_model": base_model,
        "lowercase": lowercase,
        "student": {**config_summary(config), "parameters": metrics.get("student_parameters")},
        "teacher": {
            **config_summary(teacher_config),
            "parameters": metrics.get("teacher_parameters"),
            "folder": teacher.name,
            "origin": [
                {
                    "stage": r.get("stage"),
                    "folder": r["folder"],
                    "source": r.get("source"),
                    "source_card": r.get("source_card") or {},
                    "train": training(r),
                    "selection": r.get("selection"),
                    "examples": r.get("examples"),
                }
                for r in origin
            ],
            "finetuned": finetuned is not None,
        },
        "data": {
            "train": split_size(train_attrs),
            "dev": split_size(h5_attrs(dev_features)),
            "test": split_size(h5_attrs(test_features)),
            "seq": (train_attrs.get("settings") or {}).get("max_seq_length"),
            "feature_settings": train_attrs.get("settings") or {},
            "augmentation": {"stats": read_json(augmented), "settings": dict(augment or {})} if augmented else None,
        },
        "recipe": {
            "general": general_phases,
            "backbone": {
                "losses": backbone_record.get("losses"),
                "examples": backbone_record.get("examples"),
                "train": training(backbone_record),
            },
            "prediction": {
                "temperature": prediction_record.get("temperature"),
                "examples": prediction_record.get("examples"),
                "train": training(prediction_record),
                "teacher_logits": metrics.get("teacher_logits"),
                "teacher_logits_mode": metrics.get("teacher_logits_mode"),
                "selection": metrics.get("checkpoint_selection") or prediction_record.get("selection"),
            },
            "no_distillation": metrics.get("no_distillation_selection"),
        },
        "metrics": metrics,
        "export": {
            "split": export_record.get("split"),
            "metrics": student_export.get("metrics", {}),
            "int8_metric_change": student_export.get("int8_metric_change"),
            "bf16_metric_change": student_export.get("bf16_metric_change"),
        }
        if export_record
        else {},
        "speed": benchmark_rows(summary, task.name),
    }


# ----------------------------------------------------------------------------------------------
# Writing


def number(value: Any, digits: int = 2) -> str:
    """A metric as the card writes it (``digits`` decimals); ``-`` when absent."""
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}"


def percent(ratio: Any) -> str:
    """A ratio (retention) as a percentage with one decimal; ``-`` when absent."""
    return "-" if ratio is None else f"{100 * float(ratio):.1f}%"


def count(value: Any) -> str:
    """An integer with thousands separators; ``not recorded`` when absent."""
    return NOT_RECORDED if value is None else f"{int(value):,}"


def model_name(facts: Mapping[str, Any]) -> str:
    """The model's name on its card: task, depth and width (``sst2-student-3L-384H``)."""
    s = facts["student"]
    return f"{facts['task']}-student-{s['layers']}L-{s['hidden']}H"


def front_matter(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata: license, language, library, pipeline tag, tags, base_model only
    when configured, and model-index with the student's metrics on the reported split."""
    m = facts["metrics"]
    split = m.get("split", "dev")
    data = facts["data"].get(split) or {}
    # The dataset is named by the data file the metric was computed on; `type` is not a Hub
    # dataset id, so the Hub links no dataset the model was never evaluated on.
    source = data.get("source") or split
    meta: dict[str, Any] = {
        "license": facts["license"],
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": PIPELINE_TAGS[facts["head"]],
        "tags": ["distillation", "tinybert", "bert", facts["task"]],
    }
    if facts.get("base_model"):
        meta["base_model"] = facts["base_model"]
    student = m.get("student") or {}
    meta["model-index"] = [
        {
            "name": model_name(facts),
            "results": [
                {
                    "task": {"type": PIPELINE_TAGS[facts["head"]], "name": TASK_KINDS[facts["head"]]},
                    "dataset": {"name": f"{facts['task']} {split} split ({source})", "type": source, "split": split},
                    "metrics": [
                        {"type": key, "value": round(float(value), 2), "name": f"{split} {METRIC_NAMES.get(key, key)}"}
                        for key, value in student.items()
                    ],
                }
            ],
        }
    ]
    return meta


def _losses(losses: Mapping[str, Any] | None) -> str:
    if not losses:
        return NOT_RECORDED
    terms = [f"{k} {losses[k]}" for k in ("attention", "value", "hidden", "embedding") if losses.get(k)]
    weights = losses.get("weights") or {}
    if weights:
        terms = [t + f" x{weights[t.split()[0]]}" if t.split()[0] in weights else t for t in terms]
    return " + ".join(terms) + f" (layer map {losses.get('layer_map')}, masking {losses.get('masking')})"


def _budget(t: Mapping[str, Any]) -> str:
    if not t:
        return NOT_RECORDED
    planned = f"epochs {t['epochs']}" if t.get("epochs") is not None else f"max_steps {t.get('max_steps')}"
    return f"{count(t.get('steps'))} steps ({planned})"


def _lr(t: Mapping[str, Any]) -> str:
    if not t:
        return NOT_RECORDED
    warm = f", warm-up {t['warmup']}" if t.get("schedule") == "linear" and t.get("warmup") else ""
    return f"{t.get('lr')} {t.get('schedule')}{warm}, {t.get('optimizer')}, {t.get('precision')}"


def _origin_text(teacher: Mapping[str, Any], task: str) -> str:
    parts = []
    for r in teacher["origin"]:
        stage = str(r.get("stage") or "")
        if stage == "import_teacher":
            src = r.get("source") or {}
            if src.get("package"):
                where = f"the Python package `{src['package']}` (`{src.get('subdir', '')}`)"
            elif src.get("url"):
                where = f"<{src['url']}>"
            else:
                where = f"a local checkpoint (`{Path(str(src.get('path', ''))).name}`)"
            card = r.get("source_card") or {}
            said = ""
            if card.get("title"):
                said = f", whose model card names it **{card['title']}**"
                if card.get("license"):
                    said += f" (license {card['license']})"
            parts.append(f"imported from {where}{said}")
        elif stage.startswith("finetune"):
            t, sel = r.get("train") or {}, r.get("selection") or {}
            best = ""
            if sel.get("best_metric") is not None:
                best = f"; best dev {number(sel['best_metric'])} at step {sel.get('selected_step')} kept"
            parts.append(
                f"fine-tuned here on {count(r.get('examples'))} {task} training features ({_budget(t)}, "
                f"batch {t.get('batch')}, lr {_lr(t)}{best})"
            )
    return "; ".join(parts) if parts else f"`{teacher['folder']}` (its provenance is {NOT_RECORDED})"


def _metric_rows(facts: Mapping[str, Any]) -> list[str]:
    """The results table: one row per figure, a column for the reported split and, when that is
    test, one for dev beside it."""
    m, key = facts["metrics"], facts["metric"]
    split = m.get("split", "dev")
    dev = m.get("dev") or {}
    both = split != "dev"
    name = METRIC_NAMES.get(key, key)
    keys = list((m.get("student") or {}).keys()) or [key]
    rows = [
        f"| | {split} (reported) | dev |" if both else "| | dev (reported) |",
        "|---|---|---|" if both else "|---|---|",
    ]

    def add(label: str, reported: str, on_dev: str) -> None:
        rows.append(f"| {label} | {reported} | {on_dev} |" if both else f"| {label} | {reported} |")

    for side in ("student", "teacher"):
        for k in keys:
            add(
                f"{side} {METRIC_NAMES.get(k, k)}",
                number((m.get(side) or {}).get(k)),
                number((dev.get(side) or {}).get(k)),
            )
    add(f"retention (student / teacher {name})", percent(m.get("retention")), percent(dev.get("retention")))
    base, dev_base = m.get("baseline") or {}, dev.get("baseline") or {}
    add(f"trivial baseline ({base.get('kind', NOT_RECORDED)}) {name}", number(base.get(key)), number(dev_base.get(key)))
    if "no_distillation" in m:
        add(
            f"no distillation (the same student fine-tuned on labels) {name}",
            number(m["no_distillation"].get(key)),
            number((dev.get("no_distillation") or {}).get(key)),
        )
        add("distillation gain (points)", number(m.get("distillation_gain")), number(dev.get("distillation_gain")))
    export = facts.get("export") or {}
    for kind, label in (
        ("onnx_int8", "student as INT8 ONNX"),
        ("pytorch_bf16", "student in bf16 (PyTorch autocast, CPU)"),
    ):
        got = (export.get("metrics") or {}).get(kind)
        if got:
            value = number(got.get(key))
            add(f"{label} {name}", *((value, "-") if export.get("split") == split else ("-", value)))
    return rows


def render(facts: Mapping[str, Any]) -> str:
    """The model card: YAML front matter, then what the model is, how it was made, how good and
    how fast it is, and how to load it."""
    task, head, key = facts["task"], facts["head"], facts["metric"]
    s, t, data, recipe, m = facts["student"], facts["teacher"], facts["data"], facts["recipe"], facts["metrics"]
    split = m.get("split", "dev")
    metric_name = METRIC_NAMES.get(key, key)
    meta = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    lines = ["---", meta.rstrip(), "---", ""]
    ratio = ""
    if s.get("parameters") and t.get("parameters"):
        ratio = f", with {t['parameters'] / s['parameters']:.1f}x fewer parameters"
    lines += [
        f"# {model_name(facts)}",
        "",
        f"A {s['layers']}-layer BERT student distilled TinyBERT-style from a {t['layers']}-layer BERT teacher "
        f"for **{task}** ({TASK_KINDS[head].lower()}){ratio}, made by the bert-distill workflow. "
        f"On the {split} split it scores {metric_name} {number((m.get('student') or {}).get(key))} against the "
        f"teacher's {number((m.get('teacher') or {}).get(key))}.",
        "",
        "## Model",
        "",
        "| | student | teacher |",
        "|---|---|---|",
    ]
    for label, k in (
        ("layers", "layers"),
        ("hidden size", "hidden"),
        ("attention heads", "heads"),
        ("feed-forward size", "intermediate"),
        ("vocabulary", "vocab"),
        ("max positions", "positions"),
    ):
        lines.append(f"| {label} | {s.get(k)} | {t.get(k)} |")
    lines.append(f"| parameters | {count(s.get('parameters'))} | {count(t.get('parameters'))} |")
    lines += [
        "",
        f"Tokenizer: BERT WordPiece, {'lower-cased with accents stripped' if facts['lowercase'] else 'cased'}, "
        f"at most {s.get('positions')} tokens.",
    ]
    if facts["labels"]:
        lines.append("Labels: " + ", ".join(f"{i} = `{name}`" for i, name in enumerate(facts["labels"])) + ".")
    lines += ["", f"Teacher (`{t['folder']}`): {_origin_text(t, task)}.", ""]

    lines += ["## Data", ""]
    names = {"train": "train", "dev": "dev (selects checkpoints)", "test": "test (reported)"}
    if split == "dev":
        names["dev"] = "dev (selects checkpoints and is reported: no test split)"
    for part in ("train", "dev", "test"):
        d = data.get(part) or {}
        if not d:
            continue
        source = f" from `{d['source']}`" if d.get("source") else ""
        feats = f" ({count(d.get('features'))} features)" if d.get("features") is not None else ""
        lines.append(f"- {names[part]}: {count(d.get('examples'))} examples{feats}{source}")
    aug = data.get("augmentation")
    if aug:
        stats, settings = aug.get("stats") or {}, aug.get("settings") or {}
        lines.append(
            f"- the training data is TinyBERT's augmentation of the original: {count(stats.get('texts'))} texts, "
            f"{count(stats.get('augmented_examples'))} variants added"
            + (
                f" (n {settings.get('n')} rounds, {settings.get('m')} candidates per word, p {settings.get('p')}"
                + (f", first {settings['max_texts']} texts" if settings.get("max_texts") else "")
                + ")"
                if settings
                else ""
            )
        )
    fs = data.get("feature_settings") or {}
    window = f"{data.get('seq')} tokens" + (
        f", stride {fs['doc_stride']}, question at most {fs['max_query_length']}" if fs.get("doc_stride") else ""
    )
    lines += [f"- features: {window}", ""]

    lines += [
        "## Training recipe",
        "",
        "| stage | data | steps | batch | learning rate | seq length | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in recipe["general"]:
        tr = p["train"]
        init = p["student"].get("init_from_teacher_layers")
        start = f"; student initialised from teacher layers {init}" if init else ""
        teacher = f", teacher `{p['teacher']}`" if p.get("teacher") else ""
        lines.append(
            f"| general distillation {p['name']} | {count(p.get('examples'))} corpus sequences{teacher} "
            f"| {_budget(tr)} | {tr.get('batch', NOT_RECORDED)} | {_lr(tr)} | {p.get('seq') or NOT_RECORDED} "
            f"| {_losses(p.get('losses'))}{start} |"
        )
    if t["finetuned"]:
        ft = next(r for r in t["origin"] if str(r.get("stage", "")).startswith("finetune"))
        tr = ft["train"]
        hard = "the answer start and end" if head == "qa" else "the labels"
        lines.append(
            f"| teacher fine-tuning | {count(ft.get('examples'))} {task} training features, not augmented "
            f"| {_budget(tr)} | {tr.get('batch', NOT_RECORDED)} | {_lr(tr)} | {data.get('seq')} "
            f"| cross-entropy on {hard} |"
        )
    b = recipe["backbone"]
    tr = b["train"]
    lines.append(
        f"| task backbone distillation | {count(b.get('examples'))} {task} training features | {_budget(tr)} "
        f"| {tr.get('batch', NOT_RECORDED)} | {_lr(tr)} | {data.get('seq')} | {_losses(b.get('losses'))} |"
    )
    p = recipe["prediction"]
    tr = p["train"]
    logits = {"cached": "the teacher's logits computed once", "live": "the teacher run every batch"}.get(
        str(p.get("teacher_logits")), "the teacher's logits"
    )
    mode = f" ({p['teacher_logits_mode']})" if p.get("teacher_logits_mode") else ""
    lines.append(
        f"| task prediction distillation | {count(p.get('examples'))} {task} training features | {_budget(tr)} "
        f"| {tr.get('batch', NOT_RECORDED)} | {_lr(tr)} | {data.get('seq')} "
        f"| soft cross-entropy against {logits}{mode}, temperature {p.get('temperature')} |"
    )
    sel = p.get("selection") or {}
    lines.append("")
    if sel.get("keep") == "best" and sel.get("best_metric") is not None:
        lines.append(
            f"The prediction stage kept its best dev checkpoint: step {sel.get('selected_step')} of "
            f"{sel.get('final_step')} (dev {metric_name} {number(sel['best_metric'])})."
        )
    elif sel:
        lines.append(f"The prediction stage kept its last checkpoint (step {sel.get('final_step')}).")
    if recipe.get("no_distillation"):
        lines.append(
            "The no-distillation baseline below is the same general student fine-tuned on the labels with the "
            "prediction stage's settings, no teacher anywhere."
        )
    lines.append("")

    lines += [
        "## Results",
        "",
        f"Checkpoints were selected on dev; the headline is the {split} split"
        + (" (this task has no test split)." if split == "dev" else ", held out from every choice."),
        "",
        *_metric_rows(facts),
        "",
    ]

    lines += ["## Speed", ""]
    speed = facts.get("speed") or {}
    if speed.get("rows"):
        mc = speed["machine"]
        gpu = f", GPU {mc['gpu'].get('name')}" if isinstance(mc.get("gpu"), Mapping) else ""
        isa = f"{', '.join(mc['cpu_isa'])}; " if mc.get("cpu_isa") else ""  # a model name alone spans 5x in speed
        lines += [
            f"Measured by the workflow's inference benchmark on {mc.get('cpu') or 'an unnamed CPU'} "
            f"({isa}{mc.get('cpu_count')} cores, {mc.get('threads')} threads{gpu}): random full-length inputs, "
            f"timed over {speed.get('iterations')} batches per model, alternating with the teacher; the best fp32 "
            "backend of each side:",
            "",
            "| batch | seq | student seq/s | teacher seq/s | speedup |",
            "|---|---|---|---|---|",
        ]
        for r in speed["rows"]:
            lines.append(
                f"| {r['batch']} | {r['seq']} | {r['student_seq_per_s']:,.1f} ({r['student_backend']}) "
                f"| {r['teacher_seq_per_s']:,.1f} ({r['teacher_backend']}) | {r['speedup']:.2f}x |"
            )
    else:
        lines.append("Not measured (no inference benchmark of this model).")
    lines.append("")

    auto = AUTO_CLASSES[head]
    lines += ["## How to use", "", "```python", f"from transformers import AutoTokenizer, {auto}", ""]
    lines += [
        'path = "."  # this folder, or its Hub id once uploaded',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        f"model = {auto}.from_pretrained(path).eval()",
    ]
    if head == "qa":
        lines += [
            'question, context = "When was the bridge built?", "The bridge was built in 1889."',
            'inputs = tokenizer(question, context, truncation="only_second", return_tensors="pt")',
            "out = model(**inputs)",
            "start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())",
            "print(tokenizer.decode(inputs.input_ids[0, start : end + 1]))",
            "```",
            "",
            "The snippet takes the best start and end separately; `bertdistill predict` searches the",
            "n-best spans over windows of long contexts as the evaluation did:",
            "",
            "```bash",
            f'bertdistill predict results/{task}_model --question "When was it built?" '
            '--context "The bridge was built in 1889."',
            "```",
        ]
    else:
        lines += [
            'inputs = tokenizer(["a wonderful film"], truncation=True, return_tensors="pt")',
            "print(model.config.id2label[int(model(**inputs).logits.argmax(-1))])",
            "```",
            "",
            "or with the workflow's own tool (the evaluation's feature building):",
            "",
            "```bash",
            f'bertdistill predict results/{task}_model --text "a wonderful film"',
            "```",
        ]
    lines += [
        "",
        "## Files",
        "",
        "`config.json`, `model.safetensors`, `vocab.txt`, `tokenizer.json`, `tokenizer_config.json`, "
        "`special_tokens_map.json` and this card. The run's records (`metrics.json`, `predictions.json`, "
        f"`distill.json`) stay in `results/{task}_final/` and are not part of the model.",
        "",
        f"License: {facts['license']}"
        + {
            "config": " (model_card.license).",
            "teacher": " (the teacher's, from its source's model card; set model_card.license to choose another).",
        }.get(str(facts.get("license_from")), " (none was given: set model_card.license)."),
        "",
    ]
    return "\n".join(lines)
