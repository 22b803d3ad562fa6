# Configuration checks and the input functions that turn the configuration into file names.

import json
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from spatialreasoner.config import load_schema, run_order, validate_config
from spatialreasoner.errors import ConfigError

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

try:
    validate_config(config, load_schema(SCHEMA))
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration (see config/README.md):\n{exc}") from None

RUNS = run_order(config)
RELEASED = list(config["released"])
TINY_MODELS = [name for name, spec in config["released"].items() if "tiny" in spec]
HUB_MODELS = [name for name, spec in config["released"].items() if "repo" in spec]
BENCHMARKS = list(config["evaluate"]["benchmarks"])
EVAL_MODELS = list(config["evaluate"]["models"])


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
    raise WorkflowError(f"{name!r} is neither a run nor a released model")


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


def final_plots():
    """The report's figures: a bar plot per benchmark table and the training curves of every evaluated run."""
    plots = [f"results/plots/{bench}.png" for bench in BENCHMARKS]
    return plots + [f"results/plots/training/{run}.png" for run in evaluated_runs()]
