"""How many untimed batches a CPU backend needs before its batches take their steady time: the
benchmark's own interleaved loop (processes, lead-in batches, rounds) on a random-weight pair of
``benchmark.shapes``, run with each warm-up count in turn (ABAB...), and for every backend and side
the first timed batch against the median of the later ones (``first_over_rest``, 1.0 = steady).

Prints one JSON object: the machine, the settings, every run's per-batch times and that ratio, and
per warm-up count the median ratio over the repeats (``by_warmup``). ``--output`` also writes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from bertdistill.benchmark import run_benchmark, shape_pair
from bertdistill.settings import BenchmarkSettings

sys.path.insert(0, str(Path(__file__).parent))
from _output import emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["torch", "ort", "ort-int8"])
    ap.add_argument("--warmups", type=int, nargs="+", default=[1, 2], help="warm-up counts, run in turn")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each warm-up count")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=6, help="timed batches per model and run (>= 2)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shape", default="reference-4l-312d", help="an entry of benchmark.shapes in the config")
    ap.add_argument("--config", type=Path, default=REPO / "config/config.yaml")
    ap.add_argument("--output", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    if args.iterations < 2:
        ap.error("--iterations must be >= 2: the first batch is compared with the later ones")

    spec = yaml.safe_load(args.config.read_text())["benchmark"]["shapes"][args.shape]
    runs, machine = [], None
    with tempfile.TemporaryDirectory() as work:
        pair = shape_pair(args.shape, spec, Path(work))
        for repeat in range(args.repeats):
            for warmup in args.warmups:
                settings = BenchmarkSettings(
                    backends=args.backends, batch_sizes=[args.batch], seq_lengths=[args.seq], warmup=warmup,
                    iterations=args.iterations, threads=args.threads,
                )  # fmt: skip
                summary = run_benchmark([pair], settings, Path(work), log=lambda m: print(m, file=sys.stderr))
                machine = summary["machine"]
                for r in summary["results"]:
                    for side in ("student", "teacher"):
                        ms = r[side]["batch_ms"]
                        runs.append({
                            "repeat": repeat, "warmup": warmup, "backend": r["backend"], "side": side,
                            "batch_ms": ms, "first_over_rest": round(ms[0] / statistics.median(ms[1:]), 3),
                        })  # fmt: skip
    by_warmup: dict[str, dict[str, dict[str, float]]] = {}
    for w in args.warmups:
        for b in args.backends:
            for side in ("student", "teacher"):
                ratios = [r["first_over_rest"] for r in runs if (r["warmup"], r["backend"], r["side"]) == (w, b, side)]
                if ratios:
                    by_warmup.setdefault(str(w), {}).setdefault(b, {})[side] = round(statistics.median(ratios), 3)
    out = {
        "shape": args.shape,
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k not in ("config", "output")},
        "runs": runs,
        "by_warmup": by_warmup,
    }
    emit(out, args.output)


if __name__ == "__main__":
    main()
