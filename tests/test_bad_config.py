"""Config errors are reported by `snakemake -n`, before any job runs, in one line naming the key.

Before: a misspelled section was ignored, and position, head and layer conflicts surfaced as
tracebacks inside jobs after upstream jobs had run. Each case edits the shipped default config
(its teacher, all-MiniLM-L6-v2 from a package, is known before anything runs: 6 layers, 12
heads, 384 wide, 512 positions).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from bertdistill.config import ConfigError, check_models
from helpers import REPO, copy_workflow

DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for key in path:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

# (case, edits {dotted key: value}, what the one-line message must say)
CASES = [
    ("misspelled section", {"studnet": {"hidden_size": 256}}, "Additional properties are not allowed ('studnet'"),
    ("misspelled train key", {"general.phase1.train.lrr": 1e-4}, "'lrr' was unexpected"),
    (
        "features longer than the positions",
        {"tasks.sst2.features.max_seq_length": 1024},
        "tasks.sst2.features.max_seq_length: 1024 tokens, but teacher 'base'",
    ),
    (
        "hidden not divisible by heads",
        {"student.num_attention_heads": 10, "student.init_from_teacher_layers": _DELETE},
        "student: hidden_size 384 is not a multiple of num_attention_heads 10",
    ),
    (
        "head mismatch with attention losses on",
        {"student.num_attention_heads": 6, "student.init_from_teacher_layers": _DELETE},
        "general.losses: attention and value-relation losses compare heads one to one, but the student has 6",
    ),
    (
        "init layer out of range",
        {"student.init_from_teacher_layers": [1, 3, 7]},
        "student.init_from_teacher_layers: [7] do not exist in teacher 'base' (6 layers",
    ),
    (
        "init layers of another width",
        {"student.hidden_size": 192, "student.num_attention_heads": 12},
        "student.hidden_size: 192, but init_from_teacher_layers copies teacher 'base'",
    ),
    (
        "layer map out of range",
        {"tasks.squad.backbone.losses.layer_map": [[0, 1], [2, 6]]},
        "tasks.squad.backbone.losses.layer_map: layer pair (2, 6) out of range",
    ),
    ("student vocab set", {"student.vocab_size": 30000}, "'vocab_size' was unexpected"),  # the teacher's, always
    (
        "task teacher with another vocabulary",
        {
            "teachers.cased": {"source": {"path": "cased"}, "config": {**MINILM, "vocab_size": 28996}},
            "tasks.sst2.teacher": "cased",
        },
        "tasks.sst2.teacher: 'cased' has 28996 tokens, teacher 'base' 30522",
    ),
    (
        "general phase longer than the positions",
        {"general.phase2.seq": 512, "teachers.base.config": {**MINILM, "max_position_embeddings": 256}},
        "general.phase2.seq: 512 tokens",
    ),
    (
        "benchmark longer than the positions",
        {"benchmark.seq_lengths": [128, 1024]},
        "benchmark.seq_lengths: [1024] exceed",
    ),
    (
        "question leaves no room for the context",
        {"tasks.squad.features.max_query_length": 126},
        "tasks.squad.features: max_query_length 126 leaves no room",
    ),
    ("unknown task teacher", {"tasks.sst2.teacher": "large"}, "tasks.sst2.teacher: 'large' is not in `teachers`"),
]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("bad_config"))


@pytest.mark.parametrize("case, edits, message", CASES, ids=[c[0] for c in CASES])
def test_snakemake_dry_run_reports_config_errors_before_any_job(workflow, case, edits, message):
    cfg = copy.deepcopy(DEFAULT)
    for key, value in edits.items():
        _set(cfg, key, value)
    # The workflow's own config file (a --configfile is merged over it, and cannot remove a key).
    (workflow / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1"],
        cwd=workflow,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert message in out, out
    assert "Job stats" not in out and not (workflow / "results").exists()  # nothing planned, nothing ran


def test_the_default_passes_and_unknown_teachers_are_checked_later():
    check_models(DEFAULT, {"base": MINILM})
    check_models(DEFAULT, {"base": None})  # a URL teacher before its download: the jobs check it
    with pytest.raises(ConfigError, match="do not exist"):
        check_models(DEFAULT, {"base": {**MINILM, "num_hidden_layers": 4}})
