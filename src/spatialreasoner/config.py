"""Configuration: JSON-schema validation with defaults filled in, plus the checks a schema cannot express.

The Snakefile and ``spatialreasoner validate-config`` use the same functions, so a bad config stops the workflow
before any job runs, with a message that names the key and what was expected.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import yaml

from spatialreasoner.errors import ConfigError

SCHEMA_RELATIVE = Path("workflow") / "schemas" / "config.schema.yaml"


def schema_path() -> Path:
    """The schema file of this checkout (the package is installed from the repository root)."""
    here = Path(str(files("spatialreasoner"))).resolve()
    for parent in here.parents:
        candidate = parent / SCHEMA_RELATIVE
        if candidate.is_file():
            return candidate
    raise ConfigError(f"cannot find {SCHEMA_RELATIVE} above {here}; install the package from the repository")


def load_schema(path: str | Path | None = None) -> dict:
    return yaml.safe_load(Path(path or schema_path()).read_text())


def key_path(parts) -> str:
    """``runs.SpatialReasoner-SFT.learning_rate`` from a jsonschema error path."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _default_filling_validator(schema: dict):
    """A Draft 2020-12 validator that fills ``default`` values while validating (as Snakemake's ``validate``)."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _describe(error) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        return f"config key {where}: {error.message} (see config/README.md for the allowed keys)"
    if error.validator == "propertyNames":
        return f"config key {where}: name {error.instance!r} is not allowed: {error.message}"
    if error.validator == "oneOf":
        return (
            f"config key {where}: {json.dumps(error.instance, default=str)[:200]} matches none of the allowed forms "
            "(a url source {url, sha256, size}, a repo source {repo, repo_type, revision}, a path source {path}; "
            "released models: {repo, revision} or {tiny: {...}})"
        )
    return f"config key {where}: {error.message}"


def validate_schema(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place against the schema, filling defaults; raise ConfigError listing every problem."""
    schema = schema or load_schema()
    validator = _default_filling_validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    return config


def model_names(config: Mapping) -> set[str]:
    return set(config.get("released", {})) | set(config.get("runs", {}))


def run_order(config: Mapping) -> list[str]:
    """Runs in an order where every run comes after the run it starts from; rejects unknown inits and cycles."""
    runs = config.get("runs", {})
    released = config.get("released", {})
    for name, run in runs.items():
        init = run["init"]
        if init not in runs and init not in released:
            raise ConfigError(
                f"config key runs.{name}.init: {init!r} is neither a released model nor a run; "
                f"expected one of {sorted(model_names(config))}"
            )
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(chain[chain.index(name) :] + [name])
            raise ConfigError(f"config key runs.{name}.init: runs form a cycle ({cycle}); expected a chain of runs")
        state[name] = "visiting"
        init = runs[name]["init"]
        if init in runs:
            visit(init, chain + [name])
        state[name] = "done"
        order.append(name)

    for name in runs:
        visit(name, [])
    return order


SECRET_KEY_PATTERN = re.compile(r"token|secret|password|api_key", re.IGNORECASE)


def check_run(name: str, run: Mapping, prompts: Mapping) -> None:
    """Run settings that would otherwise only fail when the training job starts (maybe hours into a workflow)."""
    for key in ("system_prompt", "instruction"):
        value = run.get(key)
        if value is not None and value not in prompts:
            raise ConfigError(
                f"config key runs.{name}.{key}: {value!r} is not a key of prompts; expected one of {sorted(prompts)}"
            )
    weights, rewards = run.get("reward_weights"), run.get("rewards", [])
    if weights is not None and len(weights) != len(rewards):
        raise ConfigError(
            f"config key runs.{name}.reward_weights: {len(weights)} weights for {len(rewards)} rewards {rewards}; "
            "expected one weight per reward"
        )
    vllm, gpus = run.get("vllm") or {}, (run.get("resources") or {}).get("gpus", 1)
    if run.get("stage") == "grpo" and vllm.get("mode") == "server" and gpus <= vllm.get("server_gpus", 1):
        raise ConfigError(
            f"config key runs.{name}.vllm.server_gpus: the vLLM server takes {vllm.get('server_gpus', 1)} of the "
            f"job's {gpus} GPUs (resources.gpus), leaving none to train; expected resources.gpus > server_gpus"
        )
    for key in run.get("trainer_args") or {}:
        if SECRET_KEY_PATTERN.search(key):
            raise ConfigError(
                f"config key runs.{name}.trainer_args.{key}: secrets do not belong in the configuration (it is "
                "copied into job scripts, logs and run.json); set them in the environment (e.g. HF_TOKEN)"
            )


def check_semantics(config: Mapping) -> None:
    """Cross-references the schema cannot express; raise ConfigError naming the key."""
    sources = config.get("sources", {})
    overlap = set(config.get("released", {})) & set(config.get("runs", {}))
    if overlap:
        raise ConfigError(f"config keys released and runs both define {sorted(overlap)}; a model name must be unique")
    run_order(config)

    def need_source(key: str, name: str, kind: str | None = None) -> None:
        if name not in sources:
            raise ConfigError(f"config key {key}: {name!r} is not a source; expected one of {sorted(sources)}")
        if kind and kind not in sources[name]:
            raise ConfigError(f"config key {key}: source {name!r} must be a {kind} source (has no {kind!r} key)")

    for name, image_set in config.get("images", {}).items():
        need_source(f"images.{name}.source", image_set["source"], "url")
    for name, bench in config.get("benchmarks", {}).items():
        need_source(f"benchmarks.{name}.source", bench["source"], "url")
    for name, dataset in config.get("datasets", {}).items():
        need_source(f"datasets.{name}.annotations", dataset["annotations"])
        for i, image_set in enumerate(dataset.get("images", [])):
            if image_set not in config.get("images", {}):
                raise ConfigError(
                    f"config key datasets.{name}.images[{i}]: {image_set!r} is not an image set; "
                    f"expected one of {sorted(config.get('images', {}))}"
                )
    datasets = config.get("datasets", {})
    prompts = config.get("prompts", {})
    for name, run in config.get("runs", {}).items():
        check_run(name, run, prompts)
        if run["data"] not in datasets:
            raise ConfigError(
                f"config key runs.{name}.data: {run['data']!r} is not a dataset; expected one of {sorted(datasets)}"
            )
        want = "sft" if run["stage"] == "sft" else "rl"
        if datasets[run["data"]]["kind"] != want:
            raise ConfigError(
                f"config key runs.{name}.data: a {run['stage']} run needs a dataset of kind {want!r}, "
                f"but {run['data']!r} is of kind {datasets[run['data']]['kind']!r}"
            )
    evaluate = config.get("evaluate", {})
    for i, bench in enumerate(evaluate.get("benchmarks", [])):
        if bench not in config.get("benchmarks", {}):
            raise ConfigError(
                f"config key evaluate.benchmarks[{i}]: {bench!r} has no entry under benchmarks; "
                f"expected one of {sorted(config.get('benchmarks', {}))}"
            )
    known = model_names(config)
    for model, opts in evaluate.get("models", {}).items():
        if model not in known:
            raise ConfigError(
                f"config key evaluate.models.{model}: not a released model or a run; expected one of {sorted(known)}"
            )
        paper_row = (opts or {}).get("paper")
        if paper_row is not None:
            rows = {row for bench in config.get("paper", {}).values() for row in bench}
            if paper_row not in rows:
                raise ConfigError(
                    f"config key evaluate.models.{model}.paper: {paper_row!r} is not a model under paper; "
                    f"expected one of {sorted(rows)}"
                )


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Schema (with defaults) then cross-reference checks; returns the same, completed, dict."""
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(config).__name__}")
    validate_schema(config, schema)
    check_semantics(config)
    return config


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfile", help="a config YAML file, e.g. config/config.yaml")


def run(args: argparse.Namespace) -> None:
    config = load_config(args.configfile)
    print(yaml.safe_dump(config, sort_keys=False, width=120))
