"""The one entry of every rule (``script: "../scripts/run_stage.py"``).

The rule's name selects its stage (``bertdistill.stages.STAGES``, each stage lists its rules);
its named ``input``, ``output`` and ``params`` items, and wildcards of the same names, are the
stage function's keyword arguments. ``resources.gpu`` > 1 runs the stage under torchrun.
"""

import importlib.util
import os
import sys
from pathlib import Path

if importlib.util.find_spec("bertdistill") is None:
    # A rule's conda environment (--sdm conda, envs/) holds its family's packages, not this
    # package: the jobs run the checkout's code, and so do the torchrun workers they start.
    src = str(Path(snakemake.scriptdir).parent / "src")  # noqa: F821 - injected by Snakemake
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)

# The guard keeps the stage from running again in a spawned helper process (the corpus stage's
# sentence splitters), which imports this file as ``__mp_main__``, without ``snakemake``; nor
# does such a process import the stages (and torch) it does not need.
if __name__ == "__main__":
    from bertdistill.launch import run_rule

    run_rule(snakemake)  # noqa: F821 - injected by Snakemake
