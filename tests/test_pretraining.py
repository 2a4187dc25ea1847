"""Corpus preparation, shard writing/reading (HDF5 and LDDL Parquet), and bad input."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bertdistill.checkpoints import read_vocab
from bertdistill.data.corpus import CorpusError, prepare_corpus, read_sentence_documents, train_punkt, wiki_documents
from bertdistill.data.pretraining import (
    Instance,
    ShardError,
    ShardSettings,
    load_shards,
    make_shard,
    read_hdf5_shard,
    read_lddl_parquet,
    write_hdf5,
)
from bertdistill.tokenization import load_tokenizer
from helpers import DOCUMENTS, tiny_teacher, write_corpus, write_corpus_vocab


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def vocab(tmp_path):
    return write_corpus_vocab(tmp_path / "vocab.txt")


def test_punkt_trains_offline(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "no-nltk-data"))
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download must not be called"))
    splitter = train_punkt("\n\n".join(DOCUMENTS * 3))
    sents = splitter.tokenize("The train was late. She waited in the cafe. It rained all day.")
    assert sents == ["The train was late.", "She waited in the cafe.", "It rained all day."]


def test_corpus_file_format(corpus, tmp_path):
    stats = prepare_corpus([{"path": str(corpus)}], tmp_path / "out" / "sentences.txt", tmp_path / "out" / "stats.json")
    docs = read_sentence_documents(tmp_path / "out" / "sentences.txt")
    assert stats["documents"] == len(docs) == 12
    assert docs[0][0] == "The river rises in the northern hills and flows south through a wide valley."
    assert stats["sentences"] == sum(len(d) for d in docs) and all(len(d) >= 4 for d in docs)


def test_text_shards_deal_documents_round_robin(corpus, tmp_path):
    """N text shards hold documents k, k+N, ... of the one-file corpus, in order: shard job i
    reads text shard i only and builds what it built from the whole file before."""
    one = tmp_path / "one.txt"
    prepare_corpus([{"path": str(corpus)}], one)
    shards = [tmp_path / f"text_{i}.txt" for i in range(3)]
    stats = prepare_corpus([{"path": str(corpus)}], shards, tmp_path / "stats.json")
    docs = read_sentence_documents(one)
    assert stats["documents"] == len(docs) and stats["text_shards"] == 3
    for i, path in enumerate(shards):
        assert read_sentence_documents(path) == docs[i::3]


def test_corpus_does_not_depend_on_the_number_of_processes(corpus, tmp_path):
    one = [tmp_path / "one" / f"text_{i}.txt" for i in range(2)]
    two = [tmp_path / "two" / f"text_{i}.txt" for i in range(2)]
    assert prepare_corpus([{"path": str(corpus)}], one) == prepare_corpus([{"path": str(corpus)}], two, processes=2)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]


def test_fewer_documents_than_shards_is_an_error(corpus, tmp_path):
    shards = [tmp_path / f"text_{i}.txt" for i in range(13)]  # the corpus has 12 documents
    with pytest.raises(CorpusError) as e:
        prepare_corpus([{"path": str(corpus)}], shards)
    assert "12 documents are fewer than the 13 shards" in str(e.value) and "num_shards" in str(e.value)
    assert not list(tmp_path.glob("*text_*"))  # no shard, no leftover temporary file


def test_wikipedia_dump_through_gensim():
    import gensim

    dump = (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    docs = list(wiki_documents(dump))
    assert len(docs) > 50
    assert not any(d.lower().startswith("#redirect") for d in docs)
    assert not any("'''" in d or d.startswith("==") for d in docs)
    assert any(d.startswith("Anarchism is a political philosophy") for d in docs)


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(CorpusError) as e:
        prepare_corpus([{"path": str(empty)}], tmp_path / "out.txt")
    assert str(empty) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.glob(".out.txt*"))


def test_non_utf8_file_is_an_error(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    with pytest.raises(CorpusError) as e:
        prepare_corpus([{"path": str(bad)}], tmp_path / "out.txt")
    msg = str(e.value)
    assert str(bad) in msg and "offset 3" in msg and "iconv" in msg and "\n" not in msg
    assert not (tmp_path / "out.txt").exists()


def _sentences(tmp_path, corpus):
    out = tmp_path / "sentences.txt"
    prepare_corpus([{"path": str(corpus)}], out)
    return out


def test_shard_instances_follow_the_recipe(tmp_path, corpus, vocab):
    sentences = _sentences(tmp_path, corpus)
    s = ShardSettings(max_seq_length=64, dupe_factor=3, max_predictions=10)
    n = make_shard(sentences, vocab, tmp_path / "shard_0.hdf5", 0, 1, seed=7, settings=s)
    data = read_hdf5_shard(tmp_path / "shard_0.hdf5")
    assert len(data) == n > 20
    ids = {t: i for i, t in enumerate(read_vocab(vocab))}
    tok = load_tokenizer(vocab)
    stream = [
        t
        for d in read_sentence_documents(sentences)
        for sent in d
        for t in tok.encode(sent, add_special_tokens=False).ids
    ]
    text = " ".join(map(str, stream))
    n_mask = n_keep = n_rand = 0
    for r in range(n):
        m = int(data.input_mask[r].sum())
        row = data.input_ids[r, :m].tolist()
        assert m <= 64 and row[0] == ids["[CLS]"] and row[-1] == ids["[SEP]"]
        sep = row.index(ids["[SEP]"])
        assert data.segment_ids[r, : sep + 1].sum() == 0 and data.segment_ids[r, sep + 1 : m].all()
        labels = data.labels[r, :m]
        masked = np.nonzero(labels >= 0)[0]
        assert len(masked) == min(10, max(1, round(m * 0.15)))
        assert ids["[CLS]"] not in labels[masked] and ids["[SEP]"] not in labels[masked]
        restored = np.where(labels >= 0, labels, data.input_ids[r, :m])
        for seg in (restored[1:sep], restored[sep + 1 : m - 1]):
            assert " ".join(map(str, seg.tolist())) in text  # each segment is real contiguous text
        for p in masked:
            cur = data.input_ids[r, p]
            n_mask += cur == ids["[MASK]"]
            n_keep += cur == labels[p]
            n_rand += cur != ids["[MASK]"] and cur != labels[p]
    total = n_mask + n_keep + n_rand
    assert 0.7 < n_mask / total < 0.9 and n_keep / total > 0.03 and n_rand / total > 0.03
    assert 0.3 < data.nsp.mean() < 0.7  # about half random next


@pytest.mark.slow
def test_shards_do_not_depend_on_the_number_of_jobs(tmp_path, corpus, vocab):
    texts = [tmp_path / f"text_{i}.txt" for i in range(3)]
    prepare_corpus([{"path": str(corpus)}], texts)
    settings = '{"max_seq_length": 64, "dupe_factor": 2}'
    for i in range(3):  # one process, one shard after the other
        make_shard(
            texts[i],
            vocab,
            tmp_path / "seq" / f"shard_{i}.hdf5",
            i,
            3,
            5,
            ShardSettings(max_seq_length=64, dupe_factor=2),
        )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bertdistill",
                "shards",
                "--sentences",
                str(texts[i]),
                "--vocab",
                str(vocab),
                "--output",
                str(tmp_path / "par" / f"shard_{i}.hdf5"),
                "--shard-index",
                str(i),
                "--num-shards",
                "3",
                "--seed",
                "5",
                "--settings",
                settings,
            ]
        )
        for i in range(3)
    ]  # three concurrent jobs
    assert all(p.wait() == 0 for p in procs)
    for i in range(3):
        with h5py.File(tmp_path / "seq" / f"shard_{i}.hdf5") as a, h5py.File(tmp_path / "par" / f"shard_{i}.hdf5") as b:
            for k in a:
                assert np.array_equal(a[k][:], b[k][:]), (i, k)
    a0, a1 = read_hdf5_shard(tmp_path / "seq" / "shard_0.hdf5"), read_hdf5_shard(tmp_path / "seq" / "shard_1.hdf5")
    assert not np.array_equal(a0.input_ids[:5], a1.input_ids[:5])  # different documents per shard


def test_hdf5_round_trip_and_nvidia_layout(tmp_path):
    insts = [
        Instance([2, 7, 8, 3, 9, 3], [0, 0, 0, 0, 1, 1], False, [1, 4], [11, 12]),
        Instance([2, 5, 3, 6, 6, 6, 3], [0, 0, 0, 1, 1, 1, 1], True, [5], [13]),
    ]
    write_hdf5(insts, tmp_path / "s.hdf5", ShardSettings(max_seq_length=16, max_predictions=4))
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert {k: f[k].dtype.name for k in f} == {
            "input_ids": "int32",
            "input_mask": "int8",
            "segment_ids": "int8",
            "masked_lm_positions": "int32",
            "masked_lm_ids": "int32",
            "next_sentence_labels": "int8",
        }
        assert f["input_ids"].shape == (2, 16) and f["masked_lm_positions"].shape == (2, 4)
    batch = read_hdf5_shard(tmp_path / "s.hdf5").batch(torch.tensor([0, 1]))
    assert batch["input_ids"].shape == (2, 8)  # longest 7, padded to a multiple of 8
    assert batch["input_ids"][1, :7].tolist() == [2, 5, 3, 6, 6, 6, 3]
    assert batch["labels"][0].tolist() == [-1, 11, -1, -1, 12, -1, -1, -1]
    assert batch["labels"][1].tolist() == [-1, -1, -1, -1, -1, 13, -1, -1]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [6, 7]
    assert batch["next_sentence_labels"].tolist() == [0, 1]


def test_lddl_parquet_reads_into_the_same_batches(tmp_path, corpus, vocab):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    sentences = _sentences(tmp_path, corpus)
    make_shard(sentences, vocab, tmp_path / "shard.hdf5", 0, 1, 3, ShardSettings(max_seq_length=64, dupe_factor=1))
    ref = read_hdf5_shard(tmp_path / "shard.hdf5")
    words = read_vocab(vocab)
    cols = {"A": [], "B": [], "is_random_next": [], "num_tokens": [], "masked_lm_positions": [], "masked_lm_labels": []}
    for r in range(len(ref)):  # the same instances as LDDL's preprocessor would store them
        m = int(ref.input_mask[r].sum())
        row = ref.input_ids[r, :m].tolist()
        sep = row.index(words.index("[SEP]"))
        cols["A"].append(" ".join(words[t] for t in row[1:sep]))
        cols["B"].append(" ".join(words[t] for t in row[sep + 1 : m - 1]))
        cols["is_random_next"].append(bool(ref.nsp[r]))
        cols["num_tokens"].append(m)
        pos = np.nonzero(ref.labels[r] >= 0)[0].astype(np.uint16)
        buf = io.BytesIO()
        np.save(buf, pos)
        cols["masked_lm_positions"].append(buf.getvalue())
        cols["masked_lm_labels"].append(" ".join(words[t] for t in ref.labels[r, pos]))
    pq.write_table(pa.table(cols), tmp_path / "part_0.parquet")
    lddl = read_lddl_parquet([tmp_path / "part_0.parquet"], vocab)
    idx = torch.arange(len(ref))
    for chunk in idx.split(7):
        a, b = ref.batch(chunk), lddl.batch(chunk)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # and through the generic loader (a folder of Parquet files)
    assert len(load_shards([tmp_path], vocab_file=vocab)) == len(ref) * 2  # folder: parquet + hdf5


def test_shard_with_missing_dataset(tmp_path):
    with h5py.File(tmp_path / "broken.hdf5", "w") as f:
        f["input_ids"] = np.zeros((2, 8), np.int32)
        f["input_mask"] = np.ones((2, 8), np.int8)
    with pytest.raises(ShardError) as e:
        load_shards([tmp_path / "broken.hdf5"])
    msg = str(e.value)
    assert str(tmp_path / "broken.hdf5") in msg and "segment_ids" in msg and "\n" not in msg


def test_shards_made_with_another_vocab_are_refused(tmp_path, corpus, vocab):
    sentences = _sentences(tmp_path, corpus)
    make_shard(sentences, vocab, tmp_path / "shard.hdf5", 0, 1, 3, ShardSettings(max_seq_length=64, dupe_factor=1))
    other = tmp_path / "other_vocab.txt"
    other.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(ShardError, match="another vocab.txt"):
        load_shards([tmp_path / "shard.hdf5"], vocab_file=other)


def test_general_stage_refuses_a_student_with_another_vocab(tmp_path, corpus):
    from bertdistill.checkpoints import CheckpointError
    from bertdistill.stages import general_distill

    teacher = tiny_teacher(tmp_path / "teacher")
    other = tiny_teacher(tmp_path / "student_init", seed=1)
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text().replace("river", "rivers"))
    with pytest.raises(CheckpointError) as e:
        general_distill(
            teacher,
            [tmp_path / "none.hdf5"],
            tmp_path / "out",
            train={"max_steps": 1},
            losses={},
            phase="phase2",
            init=other,
        )
    assert str(other / "vocab.txt") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
