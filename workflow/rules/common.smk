# Configuration checks and the input functions that turn the configuration into file names.

import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from spatialreasoner.config import (
    attempt_chain,
    attempt_chain_lines,
    check_config_files,
    check_local_rules,
    checkpoint_steps,
    global_batch_lines,
    load_schema,
    run_order,
    validate_config,
    workflow_rule_names,
)
from spatialreasoner.conda_envs import ROOT_VARIABLE, check_conda_envs
from spatialreasoner.errors import ConfigError
from spatialreasoner.utils import RedactingFilter, redact

# Snakemake prints what the workflow logs and the errors it raises as they are: secrets (a source URL's
# user:password@, the value of a token variable) are replaced on the way, whichever code raised the error.
if not any(isinstance(f, RedactingFilter) for f in logger.filters):
    logger.addFilter(RedactingFilter())


def workflow_error(message):
    """The WorkflowError to raise with ``message``, its secrets redacted: every error of the workflow's files is
    made by this function (config values such as source URLs end up in them)."""
    return WorkflowError(redact(str(message)))


# The repository: the folder above workflow/, where workflow/Snakefile lives (the layout the Snakemake catalog reads).
REPO = Path(workflow.basedir).resolve().parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

try:
    # Snakemake keeps the last of repeated keys in a config file: read the files it loaded again, strictly.
    check_config_files(workflow.configfiles)
    validate_config(config, load_schema(SCHEMA), workflow_rule_names(REPO))
except ConfigError as exc:
    raise workflow_error(f"Invalid configuration (see config/README.md):\n{exc}") from None

# Each run's effective global batch, in the dry run's and every run's log.
for _line in global_batch_lines(config):
    logger.info(_line)
# A partition limit (max_runtime) shorter than a run turns its training job into a chain of resuming attempts: each
# job asks for at most max_runtime, and the train rule gets enough retries for the longest chain.
for _line in attempt_chain_lines(config):
    logger.info(_line)
if config.get("max_runtime") is not None:
    logger.info(f"max_runtime {config['max_runtime']} min: no job asks SLURM for a longer time limit")


def capped_runtime(minutes):
    """A job's time limit (minutes), at most the partition's (``max_runtime``): inference and downloads resume where
    a job stopped at its limit left off, training through its chain of attempts."""
    limit = config.get("max_runtime")
    return int(minutes) if limit is None else min(int(minutes), int(limit))


TRAIN_ATTEMPTS = max([attempt_chain(r, config.get("max_runtime"))[1] for r in config["runs"].values()], default=1)
TRAIN_RETRIES = TRAIN_ATTEMPTS - 1 if TRAIN_ATTEMPTS > 1 else None
if TRAIN_RETRIES:
    logger.info(f"train jobs: retries {TRAIN_RETRIES} (the longest chain's attempts - 1), instead of the profile's")

# Conda environments (--sdm conda): Snakemake copies env files and post-deploy scripts to .snakemake/conda/ and runs
# them from the working directory, so they find the repository's locks and this package through SPATIALREASONER_ROOT.
os.environ[ROOT_VARIABLE] = str(REPO)
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    try:
        check_conda_envs(REPO)
    except ConfigError as exc:
        raise workflow_error(f"Conda environments: {exc}") from None

RUNS = run_order(config)
RELEASED = list(config["released"])
TINY_MODELS = [name for name, spec in config["released"].items() if "tiny" in spec]
HUB_MODELS = [name for name, spec in config["released"].items() if "repo" in spec]
LOCAL_MODELS = [name for name, spec in config["released"].items() if "path" in spec]
BENCHMARKS = list(config["evaluate"]["benchmarks"])
EVAL_MODELS = list(config["evaluate"]["models"])


def local_rule_names(workflow):
    """The rules of ``local_rules``, each checked (as by validate_config) to be one of the rules Snakemake read."""
    try:
        return check_local_rules(config, {rule.name for rule in workflow.rules})
    except ConfigError as exc:
        raise workflow_error(f"Invalid configuration (see config/README.md):\n{exc}") from None


# Checked with the rest of the configuration (validate_config), so a step without a checkpoint stopped the workflow
# before any job.
CHECKPOINT_STEPS = checkpoint_steps(config)
# Evaluated intermediate checkpoints are models named "<run>@<step>" (results/checkpoint_models/<run>/step-<step>).
CHECKPOINT_MODELS = {f"{run}@{step}": (run, step) for run, steps in CHECKPOINT_STEPS.items() for step in steps}


def alternatives(names):
    """A wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    run=alternatives(RUNS),
    bench=alternatives(config["benchmarks"]),


def model_dir(name):
    """The folder of a model name: a run's final model or a released model."""
    if name in config["runs"]:
        return f"results/models/{name}"
    if name in config["released"]:
        return f"resources/models/{name}"
    if name in CHECKPOINT_MODELS:
        run, step = CHECKPOINT_MODELS[name]
        return f"results/checkpoint_models/{run}/step-{step}"
    raise workflow_error(f"{name!r} is neither a run nor a released model")


def final_tables():
    tables = [f"results/tables/{bench}.csv" for bench in BENCHMARKS]
    return tables + ["results/tables/summary.md"]


def evaluated_runs():
    """The runs the evaluation needs, in training order: every evaluated run and the runs it starts from."""
    needed = set()
    for name in EVAL_MODELS:
        while name in config["runs"] and name not in needed:
            needed.add(name)
            name = config["runs"][name]["init"]
    return [run for run in RUNS if run in needed]


def checkpoint_points():
    """(run, step, benchmark, score folder) of every point of the curves: step 0 where the run's initial model is
    evaluated, the intermediate checkpoints, and the final model at its stop step."""
    points = []
    for run, steps in CHECKPOINT_STEPS.items():
        cfg = config["runs"][run]
        models = [(0, cfg["init"])] if cfg["init"] in EVAL_MODELS else []
        models += [(step, f"{run}@{step}") for step in steps]
        if cfg.get("stop_steps") is not None:
            models.append((int(cfg["stop_steps"]), run))
        points += [(run, step, bench, f"results/scores/{m}/{bench}") for step, m in models for bench in BENCHMARKS]
    return points


def checkpoint_outputs():
    if not CHECKPOINT_STEPS:
        return []
    return ["results/tables/checkpoints.csv"] + [f"results/plots/checkpoints/{run}.png" for run in CHECKPOINT_STEPS]


def report_datasets():
    """The training tables of the evaluated runs (and the runs they start from)."""
    names = dict.fromkeys(config["runs"][run]["data"] for run in evaluated_runs())
    return {name: f"results/data/{name}.parquet" for name in names}


def final_plots():
    """The report's figures: a bar plot per benchmark table and the training curves of every evaluated run."""
    plots = [f"results/plots/{bench}.png" for bench in BENCHMARKS]
    return plots + [f"results/plots/training/{run}.png" for run in evaluated_runs()]


# The demo and the paper configuration share results/: say so loudly when the configuration files differ from the
# ones that wrote the current outputs (recorded when a run starts, not by dry-runs or cluster jobs).
CONFIG_RECORD = Path("results/.configfiles")
CONFIG_FILES = [os.path.relpath(f) for f in workflow.configfiles] or ["config/config.yaml"]
if CONFIG_RECORD.is_file() and CONFIG_RECORD.read_text().split() != CONFIG_FILES:
    from snakemake.logging import logger

    logger.warning(
        "\n"
        + "!" * 100
        + f"\nresults/ holds outputs made with --configfile {' '.join(CONFIG_RECORD.read_text().split())}"
        f"\nthis run uses {' '.join(CONFIG_FILES)}: outputs of the same name will be replaced."
        "\nRun each configuration in its own checkout (or copy) to keep both.\n" + "!" * 100
    )


onstart:
    CONFIG_RECORD.parent.mkdir(parents=True, exist_ok=True)
    CONFIG_RECORD.write_text("\n".join(CONFIG_FILES) + "\n")
