"""Where a training stage's snapshots live, and when they go.

A stage snapshots into ``.{output}.snapshots`` beside its output, and keeps its final snapshot
after writing the output: a job killed in its last seconds (a SLURM time limit landing after the
output was written but before Snakemake recorded the job) has its output deleted by Snakemake,
and the retry finishes from that snapshot instead of training again. The folders go once nothing
can delete the outputs any more: after the whole Snakemake run succeeded (the Snakefile's
``onsuccess``), or once a stage run from the command line returned. No torch here: the
Snakefile imports this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SNAPSHOTS = ".{}.snapshots"  # the snapshot folder of output NAME, beside it


def snapshot_dir_for(output: Path, snapshot_dir: Path | None) -> Path:
    """Snapshots live next to the output (``.{name}.snapshots``), outside the declared output."""
    return Path(snapshot_dir) if snapshot_dir else Path(output).with_name(SNAPSHOTS.format(Path(output).name))


def clear_snapshots(output: Path, snapshot_dir: Path | None = None) -> bool:
    """Remove the snapshot folder of ``output`` if the output exists; True if it was removed."""
    folder = snapshot_dir_for(output, snapshot_dir)
    if not (Path(output).exists() and folder.is_dir()):
        return False
    shutil.rmtree(folder)
    return True


def clear_finished_snapshots(root: Path) -> list[Path]:
    """:func:`clear_snapshots` for every snapshot folder under ``root``, once the outputs are
    recorded; return the folders removed. Folders set aside as stale (``.stale-<time>``) and
    those of outputs that do not exist stay."""
    folders = sorted(Path(root).rglob(SNAPSHOTS.format("*")))
    return [f for f in folders if clear_snapshots(f.with_name(f.name[1 : -len(".snapshots")]), f)]
