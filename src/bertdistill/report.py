"""What a finished run shows: training curves, the metrics table, augmentation examples and the
speed table, written as files that ``snakemake --report`` embeds (captions in ``report/*.rst``).

Everything here reads the run's own records (the trainer's ``train.csv`` and ``distill.json``,
``metrics.json``, ``export.json``, the augmentation statistics, the benchmark's ``summary.json``);
nothing is recomputed, so the report shows exactly what the stages measured.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Columns of the trainer's CSV that are not loss terms.
_NOT_LOSS = {"step", "epoch", "lr", "seq_per_s"}

_STYLE = """<style>
body{font-family:system-ui,sans-serif;font-size:14px;margin:1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
td.l,th.l{text-align:left}
caption{text-align:left;font-weight:bold;padding:4px 0}
</style>"""


def read_train_log(path: Path) -> dict[str, list[float]]:
    """The trainer's ``train.csv`` as columns (empty cells become NaN)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log; the folder was not written by the trainer (rerun its stage)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows] for key in rows[0]}


def plot_training(folder: Path, output: Path, title: str) -> dict[str, Any]:
    """One figure per trained model: every loss term against the step, the learning rate, and the
    dev metric at each evaluation when the stage selected a checkpoint on dev.

    Returns what was plotted (terms, steps, evaluations) for the log.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_train_log(folder / "train.csv")
    record = json.loads((folder / "distill.json").read_text()) if (folder / "distill.json").is_file() else {}
    history = (record.get("selection") or {}).get("history") or []
    steps = log.get("step", [])
    terms = [k for k in log if k not in _NOT_LOSS and k != "value"]
    panels = 3 if history else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    ax = axes[0]
    # The total last and dashed: with one term it equals that term and would hide it.
    for term in sorted(terms, key=lambda t: t == "loss"):
        total = term == "loss"
        ax.plot(steps, log[term], label=term, color="black" if total else None, linestyle="--" if total else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (training batches)")
    if terms and min(min(log[t]) for t in terms) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(steps, log.get("lr", []), color="tab:gray")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    if history:
        ax = axes[2]
        keys = [k for k in history[0] if k not in ("step", "metric")] or ["metric"]
        for key in keys:
            ax.plot([h["step"] for h in history], [h[key] for h in history], marker="o", label=key)
        selected = record["selection"].get("selected_step")
        if selected is not None:
            ax.axvline(selected, color="tab:red", linestyle="--", linewidth=1, label=f"kept: step {selected}")
        ax.set_xlabel("step")
        ax.set_ylabel("dev metric")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    wall = record.get("wall_s")
    fig.suptitle(f"{title}: {int(steps[-1]) if steps else 0} steps" + (f", {wall:.0f} s" if wall else ""))
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Text as text, not glyph outlines: searchable in the report and a third of the size.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(output, format="svg")
    plt.close(fig)
    return {"terms": terms, "steps": len(steps), "evaluations": len(history)}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _score(metrics: Mapping[str, Any] | None, keys: Sequence[str]) -> str:
    """A model's scores on one split, e.g. ``77.8 / 68.3`` for F1 / EM."""
    if not metrics:
        return "–"
    return " / ".join(_fmt(metrics.get(k)) for k in keys)


def _size_mb(path: Path) -> float | None:
    return round(path.stat().st_size / 1e6, 1) if path.is_file() else None


def metrics_rows(final: Path, export: Path | None = None) -> list[dict[str, str]]:
    """Rows of the metrics table for one task: teacher, student, its INT8 copy, the
    no-distillation baseline and the trivial baseline, on the reported split with dev beside."""
    m = json.loads((final / "metrics.json").read_text())
    key = m["metric"]
    keys = [key, "exact_match"] if key == "f1" else [key]
    label = " / ".join({"f1": "F1", "exact_match": "EM", "accuracy": "accuracy"}.get(k, k) for k in keys)
    dev = m.get("dev", {})
    exp = json.loads((export / "export.json").read_text()) if export is not None else None

    def row(model: str, params: Any, size: Any, test: Any, dev_: Any, retention: Any = None) -> dict[str, str]:
        out = {
            "task": m["task"],
            "model": model,
            "parameters (M)": _fmt(params / 1e6) if isinstance(params, int) else "–",
            "size on disk (MB)": _fmt(size),
            f"{m['split']} {label}": _score(test, keys),
        }
        if m["split"] != "dev":  # dev beside the held-out split; without one, dev is the headline
            out[f"dev {label}"] = _score(dev_, keys)
        out["retention (% of teacher)"] = _fmt(100 * retention) if retention is not None else "–"
        return out

    # Sizes of the fp32 weights as saved (safetensors); the INT8 row is its ONNX file.
    s_size = _size_mb(final / "model.safetensors")
    t_size = None
    if exp is not None:
        t_size = _size_mb(Path(exp["models"]["teacher"]["source"]) / "model.safetensors")
    rows = [
        row("teacher", m["teacher_parameters"], t_size, m["teacher"], dev.get("teacher")),
        row("student (distilled)", m["student_parameters"], s_size, m["student"], dev.get("student"), m["retention"]),
    ]
    if exp is not None:
        s = exp["models"]["student"]
        # The INT8 row's size is its ONNX file; bf16 runs the fp32 weights, cast at run time.
        for kind, model in (
            ("onnx_int8", "student INT8 (ONNX)"),
            ("pytorch_bf16", "student bf16 (PyTorch autocast, CPU)"),
        ):
            if kind in s["metrics"]:
                got = s["metrics"][kind]
                size = s["files"]["int8"]["mb"] if kind == "onnx_int8" else s_size
                ratio = got[key] / m["teacher"][key] if m["teacher"].get(key) else None
                rows.append(row(model, m["student_parameters"], size, got, None, ratio))
    if "no_distillation" in m:
        nd = m["no_distillation"]
        ratio = nd[key] / m["teacher"][key] if m["teacher"].get(key) else None
        rows.append(
            row(
                "no distillation (same student, labels only)",
                m["student_parameters"],
                s_size,
                nd,
                dev.get("no_distillation"),
                ratio,
            )
        )
    rows.append(row(f"trivial: {m['baseline']['kind']}", None, None, m["baseline"], (dev.get("baseline") or {})))
    return rows


def _table(rows: Sequence[Mapping[str, Any]], caption: str = "", left: int = 2) -> str:
    """An HTML table of ``rows`` (dicts with the same keys); the first ``left`` columns are text."""
    if not rows:
        return ""
    cols = list(rows[0])
    align = lambda i: ' class="l"' if i < left else ""  # noqa: E731
    head = "".join(f"<th{align(i)}>{html.escape(c)}</th>" for i, c in enumerate(cols))
    body = "".join(
        "<tr>" + "".join(f"<td{align(i)}>{html.escape(str(r[c]))}</td>" for i, c in enumerate(cols)) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title>{_STYLE}'
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>\n"


def write_metrics(finals: Iterable[Path], exports: Iterable[Path], output: Path, table: Path) -> list[dict[str, str]]:
    """The metrics table of every task as HTML (``output``) and TSV (``table``)."""
    by_task = {Path(e).name.removesuffix("_onnx"): Path(e) for e in exports}
    rows: list[dict[str, str]] = []
    body = "<h2>Metrics</h2>"
    for final in finals:
        task = Path(final).name.removesuffix("_final")
        task_rows = metrics_rows(Path(final), by_task.get(task))
        m = json.loads((Path(final) / "metrics.json").read_text())
        body += _table(task_rows, f"{task}: {m['examples']} {m['split']} examples")
        gain = m.get("distillation_gain")
        if gain is not None:
            body += (
                f"<p>{html.escape(task)}: distillation gain over the no-distillation baseline "
                f"{gain:+.1f} points ({m['split']}).</p>"
            )
        rows += task_rows
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_page("Metrics", body))
    # One header for all tasks: the split and metric columns differ between tasks, so name them generically.
    with table.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["task", "model", "parameters_M", "size_MB", "reported", "dev", "retention_pct"])
        for r in rows:
            values = list(r.values())
            w.writerow(values[:5] + (values[5:6] if len(values) == 7 else ["–"]) + values[-1:])
    return rows


def write_augmentation(augmented: Iterable[Path], output: Path, examples: int = 8) -> dict[str, Any]:
    """Per augmented training file: its statistics and the first ``examples`` originals with
    their augmented copies."""
    body = "<h2>Augmentation</h2>"
    stats_all = {}
    for path in augmented:
        path = Path(path)
        task = path.parent.parent.name
        stats = json.loads(Path(f"{path}.stats.json").read_text())
        samples = json.loads(Path(f"{path}.samples.json").read_text())
        stats_all[task] = stats
        body += f"<h3>{html.escape(task)}</h3>"
        body += _table([{"statistic": k, "value": v} for k, v in stats.items()], left=1)
        rows = []
        for s in samples[:examples]:
            original = s["original"] if isinstance(s["original"], str) else " ||| ".join(map(str, s["original"]))
            for i, aug in enumerate(s["augmented"]):
                text = aug if isinstance(aug, str) else " ||| ".join(map(str, aug))
                rows.append({"original": original if i == 0 else "", "augmented": text})
        body += _table(rows, "examples", left=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_page("Augmentation", body))
    return stats_all


def write_speed(benchmark: Path, output: Path, plot: Path) -> dict[str, Any]:
    """The benchmark's speedup tables (every backend, shape, batch and sequence length), the
    headline ratios, the skipped backends with their reasons and the machine, as HTML; its
    throughput plot copied beside."""
    summary = json.loads((benchmark / "summary.json").read_text())
    machine = summary.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())
    body = "<h2>Inference speed</h2><p>" + html.escape(
        f"{machine.get('cpu')} ({machine.get('threads')} threads of {machine.get('cpu_count')} CPUs; "
        f"{', '.join(machine.get('cpu_isa') or ['no ISA flags read'])}), "
        f"GPU: {machine.get('gpu') or 'none'}; {versions}"
    )
    body += "</p>"
    pairs = summary.get("pairs") or {}
    for name, pair in pairs.items():
        s, t = pair["student"], pair["teacher"]
        rows = [
            {
                "backend": r["backend"],
                "precision": r["precision"],
                "batch": r["batch"],
                "seq": r["seq"],
                "student seq/s": r["student"]["seq_per_s"],
                "teacher seq/s": r["teacher"]["seq_per_s"],
                "speedup": f"{r['speedup']:.2f}x",
                "student p50 / p99 ms": f"{r['student']['latency_ms']['p50']} / {r['student']['latency_ms']['p99']}",
            }
            for r in summary.get("results", [])
            if r["pair"] == name
        ]
        caption = (
            f"{name} ({pair.get('kind')}): student {s['layers']}L-{s['hidden_size']}H "
            f"({s['parameters'] / 1e6:.1f}M) vs teacher {t['layers']}L-{t['hidden_size']}H "
            f"({t['parameters'] / 1e6:.1f}M)"
        )
        body += _table(rows, caption)
        for h in summary.get("headline", []):
            if h["pair"] == name and h.get("best_fp32"):
                b = h["best_fp32"]
                body += (
                    f"<p>batch {h['batch']}, seq {h['seq']}: best fp32 student ({html.escape(b['student_backend'])}) / "
                    f"best fp32 teacher ({html.escape(b['teacher_backend'])}) <b>{b['speedup']:.2f}x</b>; "
                    f"best fp32 student / PyTorch eager {h.get('student_best_fp32_vs_torch_eager')}x; "
                    f"INT8 / fp32 ONNX student {(h.get('int8_vs_fp32_onnx') or {}).get('student', '–')}x</p>"
                )
    skipped = summary.get("skipped") or []
    if skipped:
        reasons: dict[tuple[str, str], list[str]] = {}
        for item in skipped:
            reasons.setdefault((item["backend"], item["reason"]), []).append(item["pair"])
        rows = [{"backend": b, "reason": r, "pairs": ", ".join(p)} for (b, r), p in reasons.items()]
        body += _table(rows, "skipped backends", left=3)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_page("Inference speed", body))
    shutil.copyfile(benchmark / "throughput.svg", plot)
    return {"pairs": len(pairs), "results": len(summary.get("results", []))}
