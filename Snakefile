"""SpatialReasoner: data -> SFT / GRPO training -> evaluation -> the paper's tables.

Run `snakemake --cores all --configfile config/demo.yaml` for the CPU demo, or `--profile profiles/slurm` for the
paper's reproduction on a cluster. The configuration is documented in config/README.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces config/config.yaml instead of being merged into it (the demo and the paper config name
# different kinds of source under the same keys); cluster jobs receive --configfile too.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/report.smk"


# Downloads (compute nodes often have no internet) and jobs of under a minute run in the Snakemake process itself
# on a cluster; `local_rules` in the configuration names them ([] submits every job).
workflow.localrules(*local_rule_names(workflow))
if workflow._localrules:
    logger.info(f"localrules (run by Snakemake itself, never submitted): {', '.join(sorted(workflow._localrules))}")


rule all:
    default_target: True
    input:
        final_tables(),
        final_plots(),
        checkpoint_outputs(),
        "results/report/report.html",
