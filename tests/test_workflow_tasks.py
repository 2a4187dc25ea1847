"""SQuAD and SST-2 task distillation through Snakemake on a tiny config: end to end, then a no-op rerun."""

from __future__ import annotations

import json

import yaml
from taskdata import task_teacher, write_glove, write_squad, write_sst2
from test_workflow import planned_jobs, smk
from test_workflow_general import tiny_config, workdir  # noqa: F401 - fixture

from bertdistill.checkpoints import load_model


def test_squad_and_sst2_end_to_end(workdir, tmp_path):  # noqa: F811
    wd = workdir
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    squad_dir, sst2_dir = write_squad(tmp_path / "squad"), write_sst2(tmp_path / "sst2")
    config["teachers"]["squad"] = {"source": {"path": str(task_teacher(tmp_path / "t_squad", "qa"))}, "head": "qa"}
    config["teachers"]["sst2"] = {"source": {"path": str(task_teacher(tmp_path / "t_sst2", "classification"))},
                                  "head": "classification"}
    stage = {"train": {"epochs": 1, "batch_size": 8, "lr": 5e-5, "schedule": "constant", "dynamic_padding": False,
                       "log_every": 1}}
    pred = {"train": {"epochs": 2, "batch_size": 8, "lr": 3e-5, "eval_every": 3, "keep": "best",
                      "dynamic_padding": False, "log_every": 1}}
    config["tasks"] = {
        "squad": {"teacher": "squad", "init": "phase2", "train": {"path": str(squad_dir / "train-v1.1.json")},
                  "dev": {"path": str(squad_dir / "dev-v1.1.json")},
                  "features": {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16},
                  "backbone": stage, "prediction": pred},
        "sst2": {"teacher": "sst2", "init": "phase1", "train": {"path": str(sst2_dir / "train.tsv")},
                 "dev": {"path": str(sst2_dir / "dev.tsv")}, "features": {"max_seq_length": 32},
                 "backbone": stage, "prediction": pred},
    }
    # Augmentation on for both tasks: an MLM teacher (same vocab) and word vectors.
    config["teachers"]["mlm"] = {"source": {"path": str(task_teacher(tmp_path / "t_mlm", "mlm"))}, "head": "mlm"}
    config["vectors"] = {"source": {"path": str(write_glove(tmp_path / "glove.txt"))}}
    config["augment"] = {"mlm": "mlm", "num_shards": 2, "m": 5}
    config["tasks"]["squad"]["augment"] = {"enabled": True, "n": 3}
    config["tasks"]["sst2"]["augment"] = {"enabled": True, "n": 4}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    targets = ("results/squad_final", "results/sst2_final")
    dry = smk(wd, "-n", "--cores", "2", *targets)
    jobs = planned_jobs(dry)
    assert jobs["task_features"] == 2 and jobs["teacher_logits"] == 2 and jobs["task_backbone"] == 2
    assert jobs["task_prediction"] == 2 and jobs["task_final"] == 2 and jobs["general_phase2"] == 1
    assert jobs["augment_shard"] == 4 and jobs["augment_gather"] == 2 and jobs["word_vectors"] == 1

    smk(wd, "--cores", "2", *targets)
    for task, key, head in (("squad", "f1", "qa"), ("sst2", "accuracy", "classification")):
        final = wd / f"results/{task}_final"
        metrics = json.loads((final / "metrics.json").read_text())
        assert key in metrics["student"] and key in metrics["teacher"]
        assert {"general_phase1", "backbone", "prediction", "features"} <= set(metrics["stage_wall_s"])
        assert metrics["checkpoint_selection"]["keep"] == "best"
        assert load_model(final, head=head).config.hidden_size == 16
        assert (final / "predictions.json").is_file()
    assert "general_phase2" in json.loads((wd / "results/squad_final/metrics.json").read_text())["stage_wall_s"]
    # The task stages trained on the augmented data, which holds originals plus variants.
    sst2_aug = wd / "results/sst2/augmented/train_aug.tsv"
    aug_rows = len(sst2_aug.read_text().strip().splitlines()) - 1
    assert aug_rows > 40  # 40 originals + variants
    stats = json.loads((wd / "results/sst2/augmented/train_aug.tsv.stats.json").read_text())
    assert stats["texts"] == 40 and stats["augmented_examples"] == aug_rows - 40 and stats["eligible_words"] > 0
    assert json.loads((wd / "results/sst2/augmented/train_aug.tsv.samples.json").read_text())
    import h5py

    with h5py.File(wd / "results/sst2/features/train.hdf5") as f:
        assert f.attrs["source"].endswith("train_aug.tsv") and f["input_ids"].shape[0] == aug_rows
    squad_aug = json.loads((wd / "results/squad/augmented/train_aug.json").read_text())
    for article in squad_aug["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                a = qa["answers"][0]
                assert p["context"][a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]

    again = smk(wd, "--cores", "2", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
