"""Cluster checks that need no cluster: which calls submit to SLURM, placeholders, thread caps
(against a stand-in `sinfo` that prints what a real one does), and the workstation profile."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from bertdistill.cluster import ClusterError, check_slurm, placeholders, slurm_requested
from helpers import REPO, copy_workflow, planned_jobs


def test_slurm_requested_by_flag_or_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert slurm_requested(["snakemake", "--executor", "slurm"], {})
    assert slurm_requested(["snakemake", "-e", "slurm"], {}) and slurm_requested(["x", "--executor=slurm"], {})
    assert slurm_requested(["snakemake", "--profile", "slurm"], {})  # ./slurm -> profiles/slurm: executor slurm
    assert slurm_requested(["snakemake"], {"SNAKEMAKE_PROFILE": "profiles/slurm"})
    # Inside a SLURM job Snakemake runs with the jobstep executor: no second check there.
    assert not slurm_requested(["snakemake", "--profile", "slurm", "--executor", "slurm-jobstep"], {})
    assert not slurm_requested(["snakemake", "--profile", "profiles/workstation"], {})
    assert not slurm_requested(["snakemake", "--cores", "2"], {})


def test_shipped_profile_lists_every_placeholder():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    found = placeholders(dict(profile["default-resources"]), profile["set-resources"])
    assert "default-resources slurm_account=CHANGE_ME" in found
    assert "set-resources task_backbone:slurm_partition=CHANGE_ME_GPU" in found
    with pytest.raises(ClusterError, match="profiles/slurm/config.yaml: default-resources slurm_account=CHANGE_ME"):
        check_slurm(dict(profile["default-resources"]), profile["set-resources"], profile["max-threads"], sinfo="")


def test_every_gpu_rule_gets_the_gpu_partition():
    """A rule that asks for GPUs but is missing from the profile's set-resources would go to the CPU
    partition with --gpus=N and no SIGTERM before its time limit."""
    gpu_rules = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+gpu=", block, flags=re.M):
                gpu_rules.add(name.group(1))
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    gpu_partition = {r for r, res in profile["set-resources"].items() if res.get("slurm_partition") == "CHANGE_ME_GPU"}
    assert len(gpu_rules) >= 9, gpu_rules  # the parse found the rules
    assert gpu_rules - gpu_partition == set()


def _fake_sinfo(tmp_path, text: str) -> str:
    sinfo = tmp_path / "sinfo"
    sinfo.write_text(f"#!/bin/sh\nprintf '{text}'\n")
    sinfo.chmod(0o755)
    return str(sinfo)


def test_threads_and_partitions_are_checked_against_sinfo(tmp_path):
    sinfo = _fake_sinfo(tmp_path, "cpu* 32\\ngpu 64\\nsmall 4\\n")
    default = {"slurm_account": "lab", "slurm_partition": "cpu"}
    gpu = {"task_backbone": {"slurm_partition": "gpu", "cpus_per_gpu": 8}}
    check_slurm(default, gpu, 32, sinfo=sinfo)
    with pytest.raises(ClusterError, match="max-threads 8 exceeds the 4 CPUs of a node of partition 'small'"):
        check_slurm({**default, "slurm_partition": "small"}, {}, 8, sinfo=sinfo)
    with pytest.raises(ClusterError, match="partition 'gpus' does not exist \\(sinfo lists cpu, gpu, small\\)"):
        check_slurm(default, {"task_backbone": {"slurm_partition": "gpus"}}, 8, sinfo=sinfo)
    with pytest.raises(ClusterError, match="cpus_per_gpu of task_backbone exceeds the 4 CPUs"):
        check_slurm(default, {"task_backbone": {"slurm_partition": "small", "cpus_per_gpu": 8}}, 4, sinfo=sinfo)
    with pytest.raises(ClusterError, match="max-threads is not set"):
        check_slurm(default, {}, None, sinfo=sinfo)


def test_workstation_profile_plans_the_default(tmp_path):
    wd = copy_workflow(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/workstation", "-n"]
    run = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert planned_jobs(run)["general_phase1"] == 1
