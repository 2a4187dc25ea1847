"""Checks of a SLURM run before anything is submitted.

A job that asks for more CPUs than a node of its partition has stays PENDING forever
(``PartitionConfig``) while Snakemake polls on without a word, and a profile whose account or
partition is still a placeholder submits nothing useful. Both are caught when the Snakefile is
read (``snakemake --profile slurm -n`` included). The Snakefile passes plain values in; this
module never imports Snakemake.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = "CHANGE_ME"
PROFILE = "profiles/slurm/config.yaml"


class ClusterError(ValueError):
    """A cluster setting that cannot work; the message says what to set and where."""


def _option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name value`` / ``--name=value`` in ``argv``."""
    found = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(name + "="):
                found = arg.split("=", 1)[1]
    return found


def _profile_dir(name: str) -> Path | None:
    """Where Snakemake finds a profile: a path, or a name under its two config folders."""
    for folder in (Path(name), Path.home() / ".config/snakemake" / name, Path("/etc/xdg/snakemake") / name):
        if (folder / "config.yaml").is_file():
            return folder
    return None


def slurm_requested(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this Snakemake call submits to SLURM: ``--executor slurm`` on the command line, or a
    profile (``--profile``, ``$SNAKEMAKE_PROFILE``) saying so. (Snakemake only knows its executor
    after the Snakefile is read; the jobs inside SLURM run with ``--executor slurm-jobstep``.)"""
    executor = _option(argv, "--executor", "-e")
    if executor is not None:
        return executor == "slurm"
    profile = _option(argv, "--profile") or environ.get("SNAKEMAKE_PROFILE")
    folder = _profile_dir(profile) if profile else None
    if folder is None:
        return False
    settings = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return settings.get("executor") == "slurm"


def placeholders(default_resources: Mapping[str, Any], rule_resources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``where: key=value`` of every resource still holding a CHANGE_ME placeholder."""
    found = [f"default-resources {k}={v}" for k, v in default_resources.items() if PLACEHOLDER in str(v)]
    for rule, resources in sorted(rule_resources.items()):
        found += [f"set-resources {rule}:{k}={v}" for k, v in resources.items() if PLACEHOLDER in str(v)]
    return found


def partition_cpus(sinfo: str = "sinfo") -> dict[str, int]:
    """CPUs per node of every partition (the smallest node's, so a job that fits runs anywhere)."""
    out = subprocess.run([sinfo, "-h", "-o", "%P %c"], capture_output=True, text=True, timeout=60, check=True).stdout
    cpus: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or not (m := re.match(r"\d+", parts[1])):
            continue
        name = parts[0].rstrip("*")  # '*' marks the default partition
        cpus[name] = min(cpus.get(name, int(m.group())), int(m.group()))
    return cpus


def check_slurm(
    default_resources: Mapping[str, Any],
    rule_resources: Mapping[str, Mapping[str, Any]],
    max_threads: int | None,
    sinfo: str | None = None,
) -> None:
    """Refuse a SLURM run whose profile still has placeholders, whose thread cap is unset, or whose
    thread cap exceeds the CPUs of a node of a partition it submits to (read with ``sinfo`` when
    available)."""
    left = placeholders(default_resources, rule_resources)
    if left:
        raise ClusterError(
            f"{PROFILE}: {', '.join(left)}; set your account (`sacctmgr show associations user=$USER`) and "
            "partitions (`sinfo -s`) there, or pass them with --default-resources/--set-resources"
        )
    if max_threads is None:
        raise ClusterError(
            f"{PROFILE}: max-threads is not set; set it to the CPUs of one node of your partitions "
            "(`sinfo -o '%P %c'`): a job asking for more threads than a node has stays PENDING forever"
        )
    sinfo = sinfo or shutil.which("sinfo")
    if sinfo is None:
        return
    try:
        cpus = partition_cpus(sinfo)
    except (OSError, subprocess.SubprocessError):
        return  # no controller to ask: SLURM itself refuses at submission
    used = {str(default_resources.get("slurm_partition"))} | {
        str(r["slurm_partition"]) for r in rule_resources.values() if "slurm_partition" in r
    }
    for partition in sorted(used - {"None"}):
        if partition not in cpus:
            raise ClusterError(
                f"{PROFILE}: partition {partition!r} does not exist (sinfo lists {', '.join(sorted(cpus))}); "
                "fix slurm_partition"
            )
        per_gpu = [
            (rule, int(r["cpus_per_gpu"]))
            for rule, r in sorted(rule_resources.items())
            if str(r.get("slurm_partition")) == partition and str(r.get("cpus_per_gpu", "")).isdigit()
        ]
        greedy = [rule for rule, n in per_gpu if n > cpus[partition]]
        if greedy:
            raise ClusterError(
                f"{PROFILE}: cpus_per_gpu of {', '.join(greedy)} exceeds the {cpus[partition]} CPUs of a node of "
                f"partition {partition!r}; such jobs would stay PENDING forever: lower cpus_per_gpu"
            )
        if max_threads > cpus[partition]:
            raise ClusterError(
                f"{PROFILE}: max-threads {max_threads} exceeds the {cpus[partition]} CPUs of a node of partition "
                f"{partition!r}; jobs asking for that many would stay PENDING forever: "
                f"set max-threads: {cpus[partition]}"
            )
