"""SpatialReasoner: data -> SFT / GRPO training -> evaluation -> the paper's tables.

Run `snakemake --cores all --configfile config/demo.yaml` for the CPU demo, or `--profile profiles/slurm` for the
paper's reproduction on a cluster. The configuration is documented in config/README.md.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_tables(),
