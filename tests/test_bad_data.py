"""Bad input to the data readers: each case ends in one line that names the file (and the record
or line where there is one) and the fix, never a traceback or a file that fails much later."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from bertdistill.data.corpus import CorpusError, prepare_corpus
from bertdistill.data.glue import SST2, GlueError, GlueFormat, read_glue_tsv, read_sst2_tsv
from bertdistill.data.pretraining import Instance, ShardError, make_shard, read_hdf5_shard, write_hdf5
from bertdistill.data.squad import SquadError, load_squad_json
from bertdistill.settings import ShardSettings
from bertdistill.tasks import MAX_DROPPED_SHARE, TaskError, build_task_features, get_task, read_h5
from helpers import write_corpus_vocab, write_squad

RTE = GlueFormat(("sentence1", "sentence2"), "label", ("entailment", "not_entailment"))


def one_line(e: pytest.ExceptionInfo, *parts: str | Path) -> str:
    """The error's message, checked to be one line holding every part."""
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


@pytest.fixture
def vocab(tmp_path):
    return write_corpus_vocab(tmp_path / "vocab.txt")


@pytest.fixture
def squad_dir(tmp_path):
    return write_squad(tmp_path / "squad")


def _rewrite(path: Path, change) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def _qas(doc):
    return [qa for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]


# ----------------------------------------------------------------------------------------------
# GLUE TSV


@pytest.mark.parametrize(
    ("fmt", "text", "header"),
    [
        (SST2, "a fine film\t1\na dull film\t0\n", "sentence<TAB>label"),
        (RTE, "it rains\tthe ground is wet\tentailment\n", "sentence1<TAB>sentence2<TAB>label"),
    ],
)
def test_headerless_tsv_is_refused(tmp_path, fmt, text, header):
    path = tmp_path / "train.tsv"
    path.write_text(text)
    with pytest.raises(GlueError) as e:
        read_glue_tsv(path, fmt)
    one_line(e, f"{path}:1:", "no header row", f"`{header}`")


def test_misspelt_header_is_not_taken_for_data(tmp_path):
    """A header that lacks a column name (and has no label value in it) keeps the 'lacks' message."""
    path = tmp_path / "train.tsv"
    path.write_text("sentense\tlabel\na fine film\t1\n")
    with pytest.raises(GlueError) as e:
        read_sst2_tsv(path)
    assert "no header row" not in one_line(e, path, "lacks sentence")


def test_row_with_more_columns_than_the_header_is_refused(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\na fine film\t1\n\na tab\tinside\t0\n")
    with pytest.raises(GlueError) as e:
        read_sst2_tsv(path)
    one_line(e, f"{path}:4:", "3 tab-separated columns", "header has 2")


def test_blank_lines_and_a_byte_order_mark_are_fine(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\ufeffsentence\tlabel\n\na fine film\t1\n\na dull film\t0\n\n".encode())
    assert read_sst2_tsv(path) == (["a fine film", "a dull film"], [1, 0])


def test_non_utf8_tsv_names_the_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("sentence\tlabel\nok\t1\ncaf\xe9 au lait\t0\n".encode("latin-1"))
    with pytest.raises(GlueError) as e:
        read_sst2_tsv(path)
    one_line(e, f"{path}:3:", "not UTF-8", "iconv")


# ----------------------------------------------------------------------------------------------
# Zero examples or features: refused at feature building, not when training starts


def test_header_only_tsv_has_no_examples(tmp_path, vocab):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(TaskError) as e:
        build_task_features(get_task("sst2"), path, vocab, training=True)
    one_line(e, f"{path}: 0 examples", "header row but no examples")


@pytest.mark.parametrize("training", [True, False])
def test_squad_with_an_empty_data_list_has_no_examples(tmp_path, vocab, training):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"version": "1.1", "data": []}))
    with pytest.raises(TaskError) as e:
        build_task_features(get_task("squad"), path, vocab, training=training)
    one_line(e, f"{path}: 0 examples", "no questions")


def test_squad_whose_questions_are_all_dropped_has_no_examples(squad_dir, vocab):
    def misplace(doc):
        for qa in _qas(doc):
            qa["answers"][0]["text"] = "xylophone"  # in no context

    path = _rewrite(squad_dir / "train-v1.1.json", misplace)
    with pytest.raises(TaskError) as e:
        build_task_features(get_task("squad"), path, vocab, training=True)
    one_line(e, f"{path}: 0 examples", "all 12 questions were dropped", "answer text is not at answer_start")


def test_no_feature_file_is_written_for_zero_examples(tmp_path, vocab):
    from bertdistill import stages

    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(TaskError, match="0 examples"):
        stages.train_features("sst2", path, vocab, tmp_path / "f/train.hdf5", {})
    assert not (tmp_path / "f/train.hdf5").exists()


@dataclass(frozen=True)
class _NoWindows:
    """A task whose windowing yields no features for its examples."""

    name: str = "stub"
    feature_defaults = {"max_seq_length": 8}

    def build_features(self, source, tokenizer, training, settings):
        return {"input_ids": np.zeros((0, 8), np.int32)}, {"examples": 3}


def test_zero_features_after_windowing_are_refused(tmp_path, vocab):
    path = tmp_path / "data.tsv"
    with pytest.raises(TaskError) as e:
        build_task_features(_NoWindows(), path, vocab, training=True)
    one_line(e, f"{path}: 0 features from 3 examples")


# ----------------------------------------------------------------------------------------------
# Dropped SQuAD training questions


def test_a_few_dropped_questions_are_logged(squad_dir, vocab, caplog):
    def misplace(doc):
        _qas(doc)[4]["answers"][0]["text"] = "xylophone"

    path = _rewrite(squad_dir / "train-v1.1.json", misplace)
    with caplog.at_level(logging.WARNING, logger="bertdistill.tasks"):
        arrays, attrs = build_task_features(get_task("squad"), path, vocab, training=True)
    assert attrs["dropped_examples"] == 1 and attrs["examples"] == 11 and len(arrays["input_ids"]) >= 11
    (record,) = [r for r in caplog.records if r.name == "bertdistill.tasks"]
    msg = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in msg
    assert str(path) in msg and "1 of 12" in msg and "'t1-1'" in msg and "not at answer_start" in msg


def test_mostly_dropped_questions_fail(squad_dir, vocab):
    n_bad = int(12 * MAX_DROPPED_SHARE) + 1

    def break_some(doc):
        for qa in _qas(doc)[:n_bad]:
            qa["answers"][0]["answer_start"] = 10_000  # beyond every context

    path = _rewrite(squad_dir / "train-v1.1.json", break_some)
    with pytest.raises(TaskError) as e:
        build_task_features(get_task("squad"), path, vocab, training=True)
    one_line(e, path, f"{n_bad} of 12 training questions were dropped", "outside the context", "bytes", "'t0-0'")


def test_dev_questions_are_never_dropped(squad_dir, vocab):
    """Dev offsets are not used (EM/F1 compare texts), so wrong ones neither drop nor fail."""

    def shift(doc):
        for qa in _qas(doc):
            qa["answers"][0]["answer_start"] = -5

    path = _rewrite(squad_dir / "dev-v1.1.json", shift)
    _, attrs = build_task_features(get_task("squad"), path, vocab, training=False)
    assert attrs["dropped_examples"] == 0 and attrs["examples"] == 6


def test_dev_question_without_answers_is_refused(squad_dir, vocab):
    def clear(doc):
        doc["data"][1]["paragraphs"][0]["qas"][2]["answers"] = []

    path = _rewrite(squad_dir / "dev-v1.1.json", clear)
    with pytest.raises(TaskError) as e:
        build_task_features(get_task("squad"), path, vocab, training=False)
    one_line(e, path, "data[1].paragraphs[0].qas[2] (id 'd1-2')", "no answers")


# ----------------------------------------------------------------------------------------------
# SQuAD JSON structure


@pytest.mark.parametrize(
    ("change", "where", "what"),
    [
        (lambda d: d["data"][1].pop("paragraphs"), "data[1]:", "'paragraphs'"),
        (lambda d: d["data"][0]["paragraphs"][0].update(context=7), "data[0].paragraphs[0]:", "'context'"),
        (lambda d: d["data"][2]["paragraphs"][0].pop("qas"), "data[2].paragraphs[0]:", "'qas'"),
        (lambda d: d["data"][3]["paragraphs"][0]["qas"][1].pop("id"), "data[3].paragraphs[0].qas[1]:", "'id'"),
        (
            lambda d: d["data"][3]["paragraphs"][0]["qas"][1].update(answers="x"),
            "data[3].paragraphs[0].qas[1] (id 't3-1'):",
            "'answers' must be a list of {text, answer_start}",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][2]["answers"][0].update(answer_start="12"),
            "data[0].paragraphs[0].qas[2] (id 't0-2'):",
            "answers[0]",
        ),
    ],
)
def test_squad_structure_errors_name_the_record(squad_dir, change, where, what):
    path = _rewrite(squad_dir / "train-v1.1.json", change)
    with pytest.raises(SquadError) as e:
        load_squad_json(path)
    one_line(e, f"{path}: {where}", what, "not a SQuAD v1.1 file")


def test_squad_structure_check_survives_python_O(squad_dir):
    """The check is not an ``assert``: ``python -O`` keeps it."""

    def change(doc):
        doc["data"][3]["paragraphs"][0]["qas"][1]["answers"] = "x"

    path = _rewrite(squad_dir / "train-v1.1.json", change)
    code = "import sys; from bertdistill.data.squad import load_squad_json; load_squad_json(sys.argv[1])"
    r = subprocess.run([sys.executable, "-O", "-c", code, str(path)], capture_output=True, text=True)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bertdistill.data.squad.SquadError:") and "qas[1] (id 't3-1')" in last, r.stderr


# ----------------------------------------------------------------------------------------------
# Corrupt HDF5


def _corrupt_first_chunk(path: Path, name: str) -> None:
    """Overwrite bytes in the middle of dataset ``name``'s first (gzip) chunk on disk."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
        assert f[name].compression == "gzip"
    offset, size = info.byte_offset, info.size
    assert size > 16
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 4)
        fh.write(b"\xff" * (size // 2))


def test_corrupt_shard_chunk(tmp_path):
    rng = np.random.default_rng(0)
    insts = [
        Instance([2, *rng.integers(5, 90, 20).tolist(), 3, 7, 3], [0] * 22 + [1] * 2, bool(i % 2), [1, 4], [11, 12])
        for i in range(200)
    ]
    path = tmp_path / "shard.hdf5"
    write_hdf5(insts, path, ShardSettings(max_seq_length=32, max_predictions=4))
    assert len(read_hdf5_shard(path)) == 200
    _corrupt_first_chunk(path, "input_ids")
    with pytest.raises(ShardError) as e:
        read_hdf5_shard(path)
    one_line(e, f"{path}: dataset 'input_ids' cannot be read", "the file is corrupt: delete it and rerun")


def test_corrupt_feature_file_chunk(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "train.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("input_ids", data=rng.integers(0, 99, (256, 64)), compression="gzip", chunks=(256, 64))
        f.create_dataset("attention_mask", data=np.ones((256, 64), np.int8))
    assert read_h5(path)[0]["input_ids"].shape == (256, 64)
    _corrupt_first_chunk(path, "input_ids")
    with pytest.raises(TaskError) as e:
        read_h5(path)
    one_line(e, f"{path}: dataset 'input_ids' cannot be read", "the file is corrupt: delete it and rerun")


def test_masked_positions_beyond_the_sequence(tmp_path):
    path = tmp_path / "shard.hdf5"
    write_hdf5([Instance([2, 7, 3, 8, 3], [0, 0, 0, 1, 1], False, [1], [11])], path, ShardSettings(max_seq_length=8))
    with h5py.File(path, "r+") as f:
        f["masked_lm_positions"][0, 0] = 40
    with pytest.raises(ShardError) as e:
        read_hdf5_shard(path)
    one_line(e, path, "masked_lm_positions", "40", "8 tokens")


# ----------------------------------------------------------------------------------------------
# Corpus


def test_empty_folder_source_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("The river rises in the hills. It flows south.\n")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(CorpusError) as e:
        prepare_corpus([{"path": str(good)}, {"path": str(empty)}], tmp_path / "out.txt")
    one_line(e, f"{empty}: no *.txt files")
    assert not (tmp_path / "out.txt").exists()


def test_blank_text_source_among_others_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("The river rises in the hills. It flows south.\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(CorpusError) as e:
        prepare_corpus([{"path": str(good)}, {"path": str(blank)}], tmp_path / "out.txt")
    one_line(e, f"{blank}: no documents")


def test_empty_sentences_file(tmp_path, vocab):
    path = tmp_path / "sentences.txt"
    path.write_text("\n\n")
    with pytest.raises(CorpusError) as e:
        make_shard(path, vocab, tmp_path / "shard.hdf5", 0, 1, 0, ShardSettings(max_seq_length=32))
    one_line(e, f"{path}: no sentences")
    assert not (tmp_path / "shard.hdf5").exists()
