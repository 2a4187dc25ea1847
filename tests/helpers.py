"""Test helpers: tiny models, vocabularies, text, task data, and running the workflow.

Shared by the test modules (which never import each other); fixtures live in conftest.py.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from bertdistill.checkpoints import load_model, load_projection, save_model
from bertdistill.data.glue import GlueFormat, write_glue_tsv, write_sst2_tsv
from bertdistill.model import BertConfig, BertModel, build_model
from bertdistill.objectives import make_projection

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "schemas", "profiles", "envs", "config", "report")

# The devices a device-parametrised test runs on: the CPU everywhere, CUDA where there is a GPU
# (marked `cuda`: benchmarks/gpu_check.sh selects them with -m cuda on a GPU machine).
NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False); benchmarks/gpu_check.sh runs it on one"
CUDA = pytest.param("cuda", marks=(pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)))
DEVICES = ["cpu", CUDA]

# ----------------------------------------------------------------------------------------------
# Tiny BERTs and vocabularies

TINY = dict(
    vocab_size=99,
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def hf_config(**overrides):
    """A tiny transformers BertConfig with eager attention (so output_attentions works)."""
    cfg = transformers.BertConfig(**{**TINY, **overrides})
    cfg._attn_implementation = "eager"
    return cfg


def write_vocab(path: Path, size: int) -> Path:
    """A BERT-style vocab with the special tokens first and ``size`` lines in all."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = special + [f"w{i}" for i in range(size - len(special))]
    path.write_text("\n".join(words) + "\n")
    return path


def random_batch(vocab_size: int, batch: int = 3, length: int = 13, seed: int = 0):
    """Random ids, token types and an attention mask with padding in rows 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, length - 4 :] = 0
    if batch > 2:
        mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, types, mask


def ngc_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """Rename a transformers state dict the way NVIDIA's modeling.py names things."""
    out = {}
    for k, v in hf_model.state_dict().items():
        k = k if k.startswith(("bert.", "cls.", "qa_outputs.", "classifier.")) else "bert." + k
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        k = k.replace("intermediate.dense.", "intermediate.dense_act.").replace("pooler.dense.", "pooler.dense_act.")
        k = k.replace("transform.dense.", "transform.dense_act.")
        out[k] = v.clone()
    return out


def general_student(general_dir: Path, teacher_dir: Path) -> Path:
    """A 'general' student folder (encoder + projection) sharing the teacher's vocab."""
    tcfg = load_model(teacher_dir).config
    torch.manual_seed(3)
    student = BertModel(
        BertConfig(
            vocab_size=tcfg.vocab_size,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=32,
            max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    )
    save_model(
        student,
        general_dir,
        vocab=teacher_dir / "vocab.txt",
        projection=make_projection(student.config, tcfg, 0),
        overwrite=True,
    )
    return general_dir


# ----------------------------------------------------------------------------------------------
# Text and task data

DOCUMENTS = [
    """The river rises in the northern hills and flows south through a wide valley. Farmers have
grown wheat and barley along its banks for centuries. In spring the water is high and fast.
By late summer it becomes slow and shallow, and children swim near the old stone bridge.
The town council built a new weir in 1998 to control the floods.""",
    """Dr. Smith arrived at the station at 5 p.m. on Monday. She carried a small leather bag and a map
of the city. The train to the coast was late, so she waited in the cafe and read the newspaper.
A man at the next table asked her about the weather. They talked about books, music and travel
until the train finally came.""",
    """Bees collect nectar from many kinds of flowers. The nectar is stored in the hive and slowly
turns into honey. A healthy colony can hold tens of thousands of workers. The queen lays eggs
throughout the warm months. In winter the bees cluster together to keep the queen warm.""",
    """The museum opened its doors to the public in the autumn. Its collection includes paintings,
maps and old scientific instruments. Visitors can see a telescope that was used to study the
moons of Jupiter. The museum also runs lessons for schools every week.""",
    """Chess is played on a board of sixty four squares. Each player begins with sixteen pieces.
The aim is to trap the opposing king so that it cannot escape. Many players study famous games
to learn new ideas. Short games can last a few minutes, while long games can take hours.""",
    """The bakery on the corner opens before sunrise. Fresh bread, rolls and cakes fill the shelves by
seven o'clock. On weekends there is a long queue outside the door. The baker says the secret is
patience and good flour.""",
]


def write_corpus(folder: Path, copies: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(DOCUMENTS * copies) + "\n")
    return path


def write_id_shards(
    folder: Path, sizes: list[int], length: int = 16, vocab_size: int = 60, seed: int = 0
) -> list[Path]:
    """HDF5 pre-training shards (our writer, NVIDIA's schema) whose rows carry a unique id in
    tokens 1 and 2 (``row_id``), so a test can tell which sequences a reader delivered."""
    from bertdistill.data.pretraining import Instance, write_hdf5
    from bertdistill.settings import ShardSettings

    rng = random.Random(seed)
    base = vocab_size - 5
    paths, next_id = [], 0
    for f, n in enumerate(sizes):
        instances = []
        for _ in range(n):
            m = rng.randint(8, length)
            body = [rng.randint(5, vocab_size - 1) for _ in range(m - 5)]
            tokens = [2, 5 + next_id // base, 5 + next_id % base, *body[: m // 2 - 3], 3, *body[m // 2 - 3 :], 3]
            sep = tokens.index(3)
            pos = sorted(rng.sample(range(3, sep), min(2, sep - 3)))
            instances.append(
                Instance(
                    tokens, [0] * (sep + 1) + [1] * (m - sep - 1), rng.random() < 0.5, pos, [tokens[i] for i in pos]
                )
            )
            next_id += 1
        paths.append(folder / f"shard_{f}.hdf5")
        write_hdf5(instances, paths[-1], ShardSettings(max_seq_length=length, max_predictions=2))
    return paths


def row_id(input_ids) -> int:
    """The id :func:`write_id_shards` wrote into a row."""
    return (int(input_ids[1]) - 5) * 55 + int(input_ids[2]) - 5


def write_corpus_vocab(path: Path) -> Path:
    """Specials, every word of the corpus, punctuation, digits and single letters (with ## forms)."""
    words = sorted({w for d in DOCUMENTS for w in re.findall(r"[a-z]+", d.lower())})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789"))
    punct = list(".,;:'\"!?()-")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + [f"##{c}" for c in chars] + punct
    seen, unique = set(), []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    path.write_text("\n".join(unique) + "\n")
    return path


def tiny_teacher(folder: Path, heads: int = 4, seed: int = 0) -> Path:
    """A random tiny BERT teacher in HF layout whose vocab covers DOCUMENTS."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_corpus_vocab(folder.parent / f"{folder.name}-vocab.txt")
    n = len(vocab.read_text().split("\n")) - 1
    torch.manual_seed(seed)
    model = BertModel(
        BertConfig(
            vocab_size=n,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=48,
            max_position_embeddings=128,
        )
    )
    return save_model(model, folder, vocab=vocab, overwrite=True)


POS = ["a wonderful film", "the music is great", "funny and warm", "a beautiful story", "great acting"]
NEG = ["a boring film", "the music is awful", "dull and cold", "a terrible story", "bad acting"]


def write_sst2(folder: Path, n_train: int = 40, n_dev: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [
            (rng.choice(POS if y else NEG) + " , " + rng.choice(DOCUMENTS[0].split(".")[:2]).strip().lower(), y)
            for y in (rng.randint(0, 1) for _ in range(n))
        ]
        write_sst2_tsv(folder / f"{split}.tsv", [r[0] for r in rows], [r[1] for r in rows])
    return folder


def write_squad(folder: Path, n_train_paragraphs: int = 4) -> Path:
    """Cloze-like questions over DOCUMENTS: the answer is a word of the context."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)

    def make(docs, prefix):
        data = []
        for d, doc in enumerate(docs):
            context = " ".join(doc.split())
            words = [w.strip(".,") for w in context.split() if len(w.strip(".,")) > 4]
            qas = []
            for q in range(3):
                ans = rng.choice(words)
                qas.append(
                    {
                        "id": f"{prefix}{d}-{q}",
                        "question": f"which word is {ans[:2]} here ?",
                        "answers": [{"text": ans, "answer_start": context.index(ans)}],
                    }
                )
            data.append({"title": f"doc{d}", "paragraphs": [{"context": context, "qas": qas}]})
        return {"version": "1.1", "data": data}

    (folder / "train-v1.1.json").write_text(json.dumps(make(DOCUMENTS[:n_train_paragraphs], "t")))
    (folder / "dev-v1.1.json").write_text(json.dumps(make(DOCUMENTS[n_train_paragraphs:], "d")))
    return folder


def task_teacher(folder: Path, head: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_corpus_vocab(folder.parent / f"{folder.name}-vocab.txt")
    n = len(vocab.read_text().split("\n")) - 1
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=n,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    return save_model(build_model(cfg, head), folder, vocab=vocab, overwrite=True)


def write_glove(path: Path, dim: int = 8) -> Path:
    """GloVe-format vectors for every word of DOCUMENTS (random but fixed)."""
    import numpy as np

    words = sorted({w.strip(".,;:'\"()").lower() for d in DOCUMENTS for w in d.split()} - {""})
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.standard_normal(dim)) + "\n" for w in words))
    return path


PAIR = GlueFormat(("sentence1", "sentence2"), "label", ("entailment", "not_entailment"))


def write_pair_task(folder: Path, n_train: int = 40, n_dev: int = 12, seed: int = 0) -> Path:
    """A synthetic RTE-layout sentence-pair task: entailment when the second sentence repeats the
    first one's sentiment word, else not_entailment."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        texts, labels = [], []
        for _ in range(n):
            a = rng.choice(POS + NEG)
            same = rng.random() < 0.5
            b = a if same else rng.choice([x for x in POS + NEG if x != a])
            texts.append((a + " , " + rng.choice(DOCUMENTS[1].split(".")[:2]).strip().lower(), "so " + b))
            labels.append(0 if same else 1)
        write_glue_tsv(folder / f"{split}.tsv", PAIR, texts, labels)
    return folder


# ----------------------------------------------------------------------------------------------
# Running the workflow


def smk(wd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=wd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def planned_jobs(r: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run."""
    jobs, in_table = {}, False
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    jobs[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                in_table = False
    return jobs


def copy_workflow(tmp_path: Path) -> Path:
    """The workflow's code and config in a fresh folder (its own .snakemake, results, logs)."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wd / name)
        elif src.exists():
            shutil.copy(src, wd / name)
    return wd


def shipped_config() -> dict:
    """``config/config.yaml``, the embedded default."""
    import yaml

    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def tiny_config(tmp_path: Path) -> dict:
    """Teacher, corpus, shards, student and both general phases at toy size."""
    teacher = tiny_teacher(tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus", copies=3)
    train = {"batch_size": 4, "lr": 1e-3, "optimizer": "adamw", "snapshot_every": 2, "log_every": 1}
    return {
        "teachers": {"base": {"source": {"path": str(teacher)}}},
        "corpus": {"sources": [{"path": str(corpus)}], "punkt_train_chars": 100000},
        "shards": {"num_shards": 2, "dupe_factor": 2, "max_predictions": {"64": 8, "128": 16}},
        "student": {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 4},
        "general": {
            "teacher": "base",
            "losses": {"layer_map": "uniform"},
            "phase1": {"seq": 64, "train": {**train, "max_steps": 6}},
            "phase2": {"seq": 128, "train": {**train, "max_steps": 3, "batch_size": 2}},
        },
        # Within the tiny teacher's 128 positions (the schema's default lengths include 384); the
        # shipped default's backends (the schema's default adds the compiled CPU ones: minutes here).
        "benchmark": {
            "backends": shipped_config()["benchmark"]["backends"],
            "batch_sizes": [1, 4],
            "seq_lengths": [32],
            "warmup": 1,
            "iterations": 2,
        },
    }


# ----------------------------------------------------------------------------------------------
# A tiny distillation objective for trainer tests


def tiny_objective(seed: int = 0):
    """A 1-layer student, its 2-layer teacher (no dropout) and the backbone objective joining them."""
    from bertdistill.objectives import BackboneObjective

    torch.manual_seed(seed)
    common = dict(
        vocab_size=40,
        num_attention_heads=2,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    teacher = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=16, **common))
    student = BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, intermediate_size=8, **common), add_pooling_layer=False
    )
    return BackboneObjective(student, teacher.config, make_projection(student.config, teacher.config, 0)), teacher


def tiny_data(n: int = 24, length: int = 12):
    """Random ids with random lengths (padding at the end), as the trainer's dataset."""
    from bertdistill.train import TensorDataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (n, length), generator=g)
    mask = (torch.arange(length)[None] < torch.randint(3, length + 1, (n, 1), generator=g)).long()
    return TensorDataset({"input_ids": ids * mask, "attention_mask": mask})


# ----------------------------------------------------------------------------------------------
# The trainer child process (tests/train_child.py) of the resume and DDP tests

CHILD = Path(__file__).with_name("train_child.py")
# The tests folder first, then whatever PYTHONPATH already holds (a source checkout without install).
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p),
}


def child(out: Path, *args: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """Run train_child.py writing to ``out`` (waiting for it, or not)."""
    cmd = [sys.executable, str(CHILD), "--out", str(out), *args]
    if wait:
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(out: Path) -> dict[str, torch.Tensor]:
    """The child's saved student and projection weights."""
    model = load_model(out / "model")
    proj = load_projection(out / "model")
    return {**model.state_dict(), "proj.weight": proj.weight, "proj.bias": proj.bias}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# A tiny classifier whose loss is a mean over rows (the default-path trainer tests)


def tiny_classifier(seed: int = 0, dropout: float = 0.0, init: float = 0.02):
    """A 1-layer sequence classifier (3 labels) and the hard-label objective training it: its
    loss is the mean over rows of a per-row cross-entropy that padded keys cannot change.
    ``init``: the weights' initial standard deviation (larger: logits far from uniform)."""
    from bertdistill.model import BertForSequenceClassification
    from bertdistill.objectives import SupervisedObjective

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=3,
        initializer_range=init,
    )
    return SupervisedObjective(BertForSequenceClassification(config))


def classifier_data(n: int = 23, length: int = 24, seed: int = 0):
    """Labelled random ids of very different lengths (half 3 to 8, half 9 to ``length``, padding
    at the end), so dynamic padding cuts micro-batches to different lengths (8, 16 or 24)."""
    from bertdistill.train import TensorDataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, length), generator=g)
    short = torch.rand(n, generator=g) < 0.5
    short_len, long_len = torch.randint(3, 9, (n,), generator=g), torch.randint(9, length + 1, (n,), generator=g)
    lengths = torch.where(short, short_len, long_len)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    labels = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})


def reference_mean_loss(objective, data, rows) -> torch.Tensor:
    """The independent reference: the mean over ``rows`` of each row's loss, every row run on
    its own at the data's full padded length (no trimming, no accumulation, no DDP, fp32)."""
    losses = [objective(data.batch(torch.tensor([int(r)])), {})["loss"] for r in rows]
    return torch.stack(losses).mean()


def weight_hash_metric(student) -> float:
    """A deterministic, irregular function of the weights in [0, 1): equal for bit-identical
    weights, and almost surely different otherwise."""
    total = sum(float(p.detach().double().sum()) for p in student.parameters())
    return (total * 1e5) % 1.0


# Dev scores by step for the keep-best tests: the best is step 4 (then lower), whatever the machine.
SCRIPTED_SCORES = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.9, 5: 0.5, 6: 0.4, 7: 0.6, 8: 0.7, 9: 0.3, 10: 0.2}


def scripted_metric(step: int, student) -> float:
    """The dev "metric" of the keep-best tests: a scripted score by step (best at step 4) plus
    1e-3 × :func:`weight_hash_metric`, so equal metrics also mean bit-identical weights."""
    return SCRIPTED_SCORES.get(step, 0.0) + 1e-3 * weight_hash_metric(student)
