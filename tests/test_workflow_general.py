"""General distillation through Snakemake on a tiny config: run, no-op rerun, targeted rerun."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bertdistill.checkpoints import load_model, load_projection
from helpers import planned_jobs, smk, tiny_teacher, write_corpus

pytestmark = pytest.mark.slow  # Snakemake and torchrun runs


def test_general_phases_run_rerun_and_targeted_rerun(tiny_workdir):
    wd = tiny_workdir
    target = "results/general/phase2"
    dry = smk(wd, "-n", "--cores", "2", target)
    assert planned_jobs(dry) == {
        "import_teacher": 1,
        "corpus": 1,
        "pretraining_shard": 4,
        "general_phase1": 1,
        "general_phase2": 1,
    }
    smk(wd, "--cores", "2", target)

    p1, p2 = wd / "results/general/phase1", wd / "results/general/phase2"
    for folder in (p1, p2):
        model = load_model(folder)
        assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16
        assert load_projection(folder).weight.shape == (32, 16)  # student 16 -> teacher 32
        assert (folder / "vocab.txt").read_bytes() == (wd / "resources/teachers/base/vocab.txt").read_bytes()
    record = json.loads((p2 / "distill.json").read_text())
    assert record["stage"] == "phase2" and record["init"].endswith("results/general/phase1")
    assert record["steps"] == 3 and record["train"]["max_steps"] == 3
    rows = (p1 / "train.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 7 and "attention" in rows[0] and "value" in rows[0]
    # phase 2 starts from phase 1's weights and projection, not from scratch
    record1 = json.loads((p1 / "distill.json").read_text())
    assert record1["init"] == "None" and record1["student"]["hidden_size"] == 16
    assert not (wd / "results/general/.phase1.snapshots").exists()

    again = smk(wd, "--cores", "2", target)
    assert "Nothing to be done" in again.stdout + again.stderr

    changed = smk(wd, "-n", "--cores", "2", target, "--config", "general={'phase2': {'train': {'lr': 0.002}}}")
    assert planned_jobs(changed) == {"general_phase2": 1}


def test_job_killed_after_writing_its_output_finishes_from_its_final_snapshot(tiny_workdir):
    """The SLURM time-limit race, with Snakemake's local executor: the phase-1 job is killed the
    moment its output appears, before Snakemake records it. Snakemake deletes the output as
    incomplete; the rerun must resume at the last step instead of training again (before: the
    stage had already removed its snapshots and the rerun started from step 0). The snapshots go
    in the Snakefile's onsuccess, once the output is recorded."""
    import subprocess
    import sys
    import time

    import psutil  # a dependency of Snakemake

    wd, target = tiny_workdir, "results/general/phase1"
    out, snapshots = wd / target, wd / "results/general/.phase1.snapshots"
    steps = yaml.safe_load((wd / "config/config.yaml").read_text())["general"]["phase1"]["train"]["max_steps"]
    smk(wd, "--cores", "2", "--until", "pretraining_shard")  # the inputs, so only phase 1 runs below
    for attempt in range(3):  # a kill that comes after Snakemake recorded the job proves nothing: again
        args = ["--forcerun", "general_phase1"] if attempt else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--cores", "2", target, *args],
            cwd=wd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while not out.exists() and proc.poll() is None:
            time.sleep(0.002)
        for child in psutil.Process(proc.pid).children(recursive=True):  # the job, not Snakemake
            child.kill()
        log = proc.communicate(timeout=300)[0]
        if proc.returncode != 0:
            break
    assert proc.returncode != 0, "the job ended before it could be killed, three times"
    assert "Error in rule general_phase1" in log, log[-3000:]
    assert not out.exists()  # Snakemake removed the output of the failed job
    assert torch.load(snapshots / "snapshot.pt", weights_only=True)["step"] == steps  # the final one, kept

    smk(wd, "--cores", "2", target)
    record = json.loads((out / "distill.json").read_text())
    assert record["steps"] == steps and record["resumed_from_step"] == steps  # nothing trained again
    assert len((out / "train.csv").read_text().strip().splitlines()) == steps + 1  # the first attempt's log
    assert not snapshots.exists()  # the run succeeded: onsuccess removed them


def test_phase2_really_starts_from_phase1(tmp_path):
    """Phase 2 with zero learning rate returns phase 1's weights and projection unchanged."""
    from bertdistill.data.corpus import prepare_corpus
    from bertdistill.data.pretraining import ShardSettings, make_shard
    from bertdistill.stages import general_distill

    teacher = tiny_teacher(tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus")
    prepare_corpus([{"path": str(corpus)}], tmp_path / "s.txt")
    make_shard(
        tmp_path / "s.txt", teacher / "vocab.txt", tmp_path / "shard.hdf5", 0, 1, 1, ShardSettings(max_seq_length=64)
    )
    student = {"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 4}
    general_distill(
        teacher,
        [tmp_path / "shard.hdf5"],
        tmp_path / "p1",
        train={"max_steps": 2, "batch_size": 4},
        losses={},
        phase="phase1",
        student=student,
    )
    general_distill(
        teacher,
        [tmp_path / "shard.hdf5"],
        tmp_path / "p2",
        train={"max_steps": 2, "batch_size": 4, "lr": 1e-30, "schedule": "constant", "weight_decay": 0.0},
        losses={},
        phase="phase2",
        init=tmp_path / "p1",
    )
    a, b = load_model(tmp_path / "p1").state_dict(), load_model(tmp_path / "p2").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert torch.allclose(load_projection(tmp_path / "p1").weight, load_projection(tmp_path / "p2").weight, atol=1e-6)


def test_cli_general_under_torchrun_two_processes(tmp_path):
    """`python -m bertdistill general --nproc 2` re-launches itself under torchrun (gloo on CPU)."""
    import os
    import subprocess
    import sys

    from bertdistill.data.corpus import prepare_corpus
    from bertdistill.data.pretraining import ShardSettings, make_shard

    teacher = tiny_teacher(tmp_path / "teacher")
    prepare_corpus([{"path": str(write_corpus(tmp_path / "corpus"))}], tmp_path / "s.txt")
    make_shard(
        tmp_path / "s.txt", teacher / "vocab.txt", tmp_path / "shard.hdf5", 0, 1, 1, ShardSettings(max_seq_length=64)
    )
    cmd = [
        sys.executable,
        "-m",
        "bertdistill",
        "general",
        "--teacher",
        str(teacher),
        "--shards",
        str(tmp_path / "shard.hdf5"),
        "--output",
        str(tmp_path / "out"),
        "--nproc",
        "2",
        "--phase",
        "phase1",
        "--train",
        json.dumps({"max_steps": 3, "batch_size": 2, "log_every": 1}),
        "--student",
        json.dumps({"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 4}),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert record["steps"] == 3 and record["stage"] == "phase1" and record["world_size"] == 2
    assert len((tmp_path / "out" / "train.csv").read_text().strip().splitlines()) == 4
    assert not (tmp_path / ".out.snapshots").exists()  # the command returned: its output is final
