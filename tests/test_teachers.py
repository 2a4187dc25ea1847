"""Teachers the embedded default builds: adapt_mlm (new tied MLM head) and finetune_teacher."""

from __future__ import annotations

import json

from bertdistill import stages
from bertdistill.checkpoints import load_model
from helpers import task_teacher, tiny_teacher, write_corpus, write_sst2


def test_adapt_mlm_trains_a_tied_head_and_reports_accuracy(tmp_path):
    from bertdistill.data.corpus import prepare_corpus
    from bertdistill.data.pretraining import ShardSettings, make_shard

    teacher = tiny_teacher(tmp_path / "teacher")  # encoder only, no MLM head
    prepare_corpus([{"path": str(write_corpus(tmp_path / "c", copies=4))}], tmp_path / "s.txt")
    for i in range(2):
        make_shard(
            tmp_path / "s.txt",
            teacher / "vocab.txt",
            tmp_path / f"shard_{i}.hdf5",
            i,
            2,
            1,
            ShardSettings(max_seq_length=64, dupe_factor=3),
        )
    metrics = stages.adapt_mlm(
        teacher,
        [tmp_path / "shard_0.hdf5"],
        [tmp_path / "shard_1.hdf5"],
        tmp_path / "mlm",
        train={"max_steps": 30, "batch_size": 8, "lr": 2e-3, "schedule": "constant"},
        heldout_examples=1024,
    )
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert before["masked_tokens"] == after["masked_tokens"] > 50
    assert after["top1_accuracy"] > before["top1_accuracy"]  # it learned something from 30 steps
    model = load_model(tmp_path / "mlm", head="mlm")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert json.loads((tmp_path / "mlm" / "mlm_accuracy.json").read_text()) == metrics


def test_finetune_teacher_records_dev_metric(tmp_path):
    base = task_teacher(tmp_path / "base", None)
    data = write_sst2(tmp_path / "data", n_train=64, n_dev=24)
    stages.task_features(
        "sst2",
        data / "train.tsv",
        data / "dev.tsv",
        base / "vocab.txt",
        tmp_path / "train.hdf5",
        tmp_path / "dev.hdf5",
        {"max_seq_length": 32},
    )
    selection = stages.finetune_teacher(
        "sst2",
        base,
        tmp_path / "train.hdf5",
        tmp_path / "dev.hdf5",
        data / "dev.tsv",
        tmp_path / "ft",
        train={
            "epochs": 20,
            "batch_size": 16,
            "lr": 2e-3,
            "eval_every": 8,
            "schedule": "constant",
            "keep": "best",
            "dynamic_padding": False,
        },
        eval_batch_size=64,
        n_best=20,
        max_answer_length=30,
    )
    record = json.loads((tmp_path / "ft" / "distill.json").read_text())
    assert record["selection"]["keep"] == "best" and selection["best_metric"] is not None
    assert all("accuracy" in h for h in record["selection"]["history"])
    assert selection["best_metric"] >= 75.0  # the toy sentiment words are easy to learn
    assert load_model(tmp_path / "ft", head="classification").classifier.out_features == 2
