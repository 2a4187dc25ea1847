from snakemake.utils import min_version, validate

from bertdistill.config import check_config, coerce_cli_strings

min_version("9.0")


configfile: "config/config.yaml"


# Nested --config values arrive as strings; convert where the schema expects numbers.
coerce_cli_strings(config, f"{workflow.basedir}/schemas/config.schema.yaml")
validate(config, "schemas/config.schema.yaml")
check_config(config)


scattergather:
    shards=config["shards"]["num_shards"],
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


rule all:
    default_target: True
    input:
        all_targets(),
