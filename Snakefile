import sys

from snakemake.utils import min_version, validate

from bertdistill.cluster import check_slurm, slurm_requested
from bertdistill.config import check_config, coerce_cli_strings, shard_count
from bertdistill.snapshots import clear_finished_snapshots

min_version("9.0")


# A --configfile (a recipe) replaces the embedded default instead of being merged into it: a
# recipe is a whole config, and a merge leaves keys of the default (a teacher's `package` next to
# the recipe's `path`) that make it invalid.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Nested --config values arrive as strings; convert where the schema expects numbers.
coerce_cli_strings(config, f"{workflow.basedir}/schemas/config.schema.yaml")
validate(config, "schemas/config.schema.yaml")
check_config(config)


scattergather:
    shards=shard_count(config),
    augment=config["augment"]["num_shards"],


include: "rules/common.smk"
include: "rules/assets.smk"
include: "rules/pretraining.smk"
include: "rules/general.smk"
include: "rules/augment.smk"
include: "rules/tasks.smk"
include: "rules/distill.smk"
include: "rules/evaluate.smk"
include: "rules/deploy.smk"
include: "rules/report.smk"


# On SLURM, before anything is submitted: no CHANGE_ME left in the profile, and no job asking for
# more threads than a node of its partition has (it would stay PENDING forever).
if slurm_requested(sys.argv):
    check_slurm(*slurm_settings())


report: "report/workflow.rst"


# Training jobs keep their final snapshot: a job killed after writing its output but before this
# process recorded it (a time limit in its last seconds) loses the output, and its retry resumes
# there. Once the whole run succeeded, every output is recorded and the snapshots can go.
onsuccess:
    clear_finished_snapshots("results")


rule all:
    default_target: True
    input:
        all_targets(),
        report_targets(),
