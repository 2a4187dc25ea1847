"""Run a stage: in this process, or under ``torchrun`` when it should use several processes.

Both ways in end here: :func:`run_rule` for Snakemake (the generic ``scripts/run_stage.py``)
and the CLI. Arguments arrive as plain values (strings, numbers, mappings, lists) and the stage
converts them (:mod:`bertdistill.stages.registry`), so a stage runs the same with or without
Snakemake. A rule or command asking for N > 1 processes re-launches the stage with
``torch.distributed.run`` (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from .stages import STAGES, Stage, StageError, for_rule

WORKER = "_stage"  # hidden CLI command of a torchrun worker: `python -m bertdistill _stage NAME KWARGS.json`


def run_stage(name: str, kwargs: Mapping[str, Any], nproc: int = 1) -> Any:
    """Call stage ``name`` with plain ``kwargs``; with ``nproc > 1`` (and not already under
    torchrun) run it in ``nproc`` processes on this node."""
    entry = STAGES[name]
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return entry.call(**kwargs)
    if not entry.distributed:
        raise StageError(f"stage {name} runs in one process; --nproc/gpu {nproc} is not supported")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"bertdistill-{name}-", delete=False) as f:
        json.dump(dict(kwargs), f, default=str)
    try:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "bertdistill",
            WORKER,
            name,
            f.name,
        ]
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(f.name)
    return kwargs.get("output")


def _plain(value: Any) -> Any:
    """Snakemake's file lists and path strings as plain lists and strings."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def rule_kwargs(
    entry: Stage, rule: str, named: Mapping[str, Mapping[str, Any]], wildcards: Mapping[str, Any]
) -> dict[str, Any]:
    """A rule's named input/output/params items as the stage's keyword arguments, by name.

    Every named item must be a parameter of the stage (a rule cannot pass what its stage would
    ignore); wildcards fill parameters of the same name (``task``). Unnamed inputs are
    dependencies only (files whose change should rerun the rule). ``resources`` items named like
    a parameter are passed too: settings that must not rerun a finished job when they change
    (evaluation batch sizes), since Snakemake reruns jobs on changed params but not resources.
    """
    names = set(entry.parameters)
    kwargs: dict[str, Any] = {}
    for section, items in named.items():
        for key, value in items.items():
            if section == "resources":
                if key in names:
                    kwargs[key] = value
                continue
            if key not in names:
                raise StageError(
                    f"rule {rule}: {section} '{key}' is not a parameter of stage {entry.name} "
                    f"({', '.join(entry.parameters)})"
                )
            kwargs[key] = _plain(value)
    for key, value in wildcards.items():
        if key in names and key not in kwargs:
            kwargs[key] = str(value)
    return kwargs


def run_rule(smk: Any) -> Any:
    """Run the stage of the Snakemake job ``smk`` (the object ``script:`` injects), logging to
    its ``log:`` file; ``resources.gpu`` > 1 runs a training stage under torchrun."""
    from .logs import log_to

    with log_to(smk.log[0] if smk.log else None) as log:
        entry = for_rule(smk.rule)
        named = {
            "input": dict(smk.input.items()),
            "output": dict(smk.output.items()),
            "params": dict(smk.params.items()),
            "resources": dict(smk.resources.items()),
        }
        kwargs = rule_kwargs(entry, smk.rule, named, dict(smk.wildcards.items()))
        if "processes" in entry.parameters:  # CPU-parallel stages use the job's threads
            kwargs["processes"] = int(smk.threads)
        log.info("rule %s -> stage %s(%s)", smk.rule, entry.name, ", ".join(kwargs))
        # One process per GPU for stages that train; the others use one device whatever they reserve.
        gpus = int(getattr(smk.resources, "gpu", 0) or 0)
        result = run_stage(entry.name, kwargs, nproc=gpus if entry.distributed else 1)
        log.info("%s", result)
        return result
