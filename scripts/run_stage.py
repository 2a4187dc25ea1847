"""The one entry of every rule (``script: "../scripts/run_stage.py"``).

The rule's name selects its stage (``bertdistill.stages.STAGES``, each stage lists its rules);
its named ``input``, ``output`` and ``params`` items, and wildcards of the same names, are the
stage function's keyword arguments. ``resources.gpu`` > 1 runs the stage under torchrun.
"""

from bertdistill.launch import run_rule

run_rule(snakemake)  # noqa: F821 - injected by Snakemake
