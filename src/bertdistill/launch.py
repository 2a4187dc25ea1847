"""Run a stage in this process, or under ``torchrun`` when it should use several GPUs.

Snakemake rules call stages through ``script:`` entry points; a rule asking for N > 1 GPUs gets
N processes (NCCL) by re-launching the stage with ``torch.distributed.run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from . import stages


def run_stage(name: str, kwargs: Mapping[str, Any], nproc: int = 1) -> Any:
    """Call ``stages.<name>(**kwargs)``; with ``nproc > 1`` (and not already distributed),
    run it in ``nproc`` processes on this node via ``torch.distributed.run``."""
    fn = getattr(stages, name)
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return fn(**kwargs)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"bertdistill-{name}-", delete=False) as f:
        json.dump(dict(kwargs), f, default=str)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bertdistill", "stage", name, f.name]
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(f.name)
    return kwargs.get("output")
