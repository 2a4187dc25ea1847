"""Conda environments per rule family (envs/*.yaml, for --sdm conda): every rule names one, each
agrees with pyproject.toml, and a job runs where its environment lacks this package (the jobs use
the checkout's code). Conda channels are unreachable here, so the files are checked, not solved;
test_workflow_tasks checks each executed job's imports against its rule's environment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Import name -> conda-forge package name, where they differ.
CONDA_NAME = {"torch": "pytorch", "yaml": "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements() -> dict[str, str]:
    """Runtime dependencies by conda name -> the requirement with that name."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {CONDA_NAME.get(_name(d), _name(d)): re.sub(r"^[A-Za-z0-9_.-]+", "", d).strip() for d in deps}


def env_packages(env: Path) -> dict[str, str]:
    """Conda packages of an environment file: name -> version constraint."""
    deps = yaml.safe_load(env.read_text())["dependencies"]
    return {_name(d): re.sub(r"^[A-Za-z0-9_.-]+", "", d).strip() for d in deps if isinstance(d, str)}


def rule_envs() -> dict[str, Path]:
    """Every rule of rules/*.smk -> the environment its `conda:` directive names."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        blocks = re.split(r"(?m)^rule (\w+):\n", smk.read_text())
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            body = re.split(r"(?m)^\S", body, maxsplit=1)[0]  # up to the next top-level statement
            found = re.search(r'conda:\n\s+"\.\./(envs/[\w.-]+\.yaml)"', body)
            assert found, f"rule {name} ({smk.name}) has no conda: directive"
            out[name] = REPO / found.group(1)
    return out


def conda_packages_of(imports: list[str]) -> set[str]:
    return {CONDA_NAME.get(m, m).lower().replace("_", "-") for m in imports}


def test_every_rule_names_an_environment_of_its_family():
    envs = rule_envs()
    declared = sum(smk.read_text().count("\nrule ") for smk in (REPO / "rules").glob("*.smk"))
    assert len(envs) == declared >= 30  # every rule, not a parse that found a few
    assert all(path.is_file() for path in envs.values()), {r: p for r, p in envs.items() if not p.is_file()}
    used = set(envs.values())
    assert used == set((REPO / "envs").glob("*.yaml")), "an environment file no rule uses"
    assert envs["export_onnx"] == envs["inference_benchmark"] == envs["benchmark_shape"]
    assert envs["corpus"] == envs["pretraining_shard"]
    assert len(used) >= 4  # per family, not one environment for everything


def test_environments_agree_with_pyproject():
    wanted = pyproject_requirements()
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    union: set[str] = set()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        assert spec["channels"] == ["conda-forge", "nodefaults"], env.name
        packages = env_packages(env)
        assert packages.pop("python") == python, env.name
        packages.pop("pip", None)
        for name, constraint in packages.items():
            assert name in wanted, f"{env.name}: {name} is not a dependency in pyproject.toml"
            assert constraint == wanted[name], f"{env.name}: {name}{constraint}, pyproject.toml says {wanted[name]}"
        union |= set(packages)
        # The module-level imports of every job (scripts/run_stage.py -> bertdistill.stages).
        assert {"pytorch", "numpy"} <= set(packages), env.name
    # Every runtime dependency serves some family; snakemake is the runner, not a job's package.
    assert union == set(wanted) - {"snakemake"}


def test_a_job_runs_the_checkouts_code_where_its_environment_lacks_the_package(tmp_path):
    """scripts/run_stage.py in a Python that has the dependencies but not bertdistill (site-packages
    on the path without its .pth files, as in a rule's conda environment) runs a real stage."""
    final = tmp_path / "sst2_final"
    final.mkdir()
    metrics = {
        "task": "sst2",
        "metric": "accuracy",
        "split": "dev",
        "student": {"accuracy": 80.0},
        "teacher": {"accuracy": 90.0},
        "retention": 80.0 / 90.0,
        "baseline": {"kind": "majority class", "accuracy": 50.0},
        "examples": 10,
        "student_parameters": 1000,
        "teacher_parameters": 2000,
    }
    (final / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "metrics.html"
    job = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
try:
    import bertdistill
    raise SystemExit("bertdistill importable before the script ran: the check would prove nothing")
except ImportError:
    pass

class Named(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

snakemake = Named(
    rule="report_metrics", scriptdir={str(REPO / "scripts")!r}, log=[{str(tmp_path / "job.log")!r}],
    input=Named(finals=[{str(final)!r}], exports=[]),
    output=Named(output={str(out)!r}, table={str(tmp_path / "m.tsv")!r}),
    params=Named(), resources=Named(), wildcards=Named(), threads=1,
)
import runpy
runpy.run_path({str(REPO / "scripts/run_stage.py")!r}, init_globals={{"snakemake": snakemake}}, run_name="__main__")
import bertdistill, os
print(bertdistill.__file__, os.environ["PYTHONPATH"])
"""
    r = subprocess.run([sys.executable, "-S", "-c", job], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    module, pythonpath = r.stdout.split()
    assert Path(module).is_relative_to(REPO / "src") and pythonpath.split(":")[0] == str(REPO / "src")
    assert "<td>80.0</td>" in out.read_text()
