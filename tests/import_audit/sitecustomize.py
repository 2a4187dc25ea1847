"""Test-only (on PYTHONPATH when BERTDISTILL_IMPORT_AUDIT is set): records, per Snakemake job, the
third-party packages that bertdistill code and the rule's script import, so a test can check each
rule's conda environment against what its job really needed."""

import atexit
import builtins
import json
import os
import sys

OUT = os.environ.get("BERTDISTILL_IMPORT_AUDIT")
if OUT:
    _seen: set[str] = set()
    _import = builtins.__import__

    def _audited(name, globals=None, locals=None, fromlist=(), level=0):
        module = _import(name, globals, locals, fromlist, level)
        if level == 0 and globals:
            importer = str(globals.get("__name__", ""))
            top = name.split(".")[0]
            ours = importer == "__main__" or importer.startswith("bertdistill")
            if ours and top not in sys.stdlib_module_names and top not in ("bertdistill", "snakemake"):
                _seen.add(top)  # recorded only once the import succeeded (optional ones may fail)
        return module

    builtins.__import__ = _audited

    def _dump():
        job = getattr(sys.modules.get("__main__"), "snakemake", None)
        rule = getattr(job, "rule", None)
        if rule:
            with open(os.path.join(OUT, f"{rule}.{os.getpid()}.json"), "w") as f:
                json.dump({"rule": rule, "imports": sorted(_seen)}, f)

    atexit.register(_dump)
