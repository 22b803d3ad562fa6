"""Configuration: JSON-schema validation with defaults filled in, plus the checks a schema cannot express.

The Snakefile and ``spatialreasoner validate-config`` use the same functions, so a bad config stops the workflow
before any job runs, with a message that names the key and what was expected.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import yaml

from spatialreasoner.errors import ConfigError
from spatialreasoner.train.launch import SIGNAL_MARGIN, check_run_accelerate_config, stop_signal_lead
from spatialreasoner.utils import redact_url

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


#: The workflow's files, relative to the repository: the Snakefile and the rule files it includes.
WORKFLOW_FILES = ("workflow/Snakefile", "workflow/rules/*.smk")
_RULE_DECLARATION = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)


def workflow_rule_names(root: str | Path | None = None) -> set[str]:
    """The rules the workflow declares (``rule <name>:`` in its files), read from the repository ``root`` (this
    checkout's by default) without running Snakemake."""
    root = Path(root) if root is not None else schema_path().parents[2]
    names: set[str] = set()
    for pattern in WORKFLOW_FILES:
        for path in sorted(root.glob(pattern)):
            names.update(_RULE_DECLARATION.findall(path.read_text()))
    if not names:
        raise ConfigError(f"no rule declared in {', '.join(WORKFLOW_FILES)} under {root}")
    return names


def check_local_rules(config: Mapping, rule_names=None) -> list[str]:
    """``local_rules``, each a rule of the workflow: ``rule_names`` (the Snakefile passes the rules Snakemake read),
    by default those its files declare (:func:`workflow_rule_names`)."""
    local = list(config.get("local_rules", []))
    if not local:
        return local
    rules = set(workflow_rule_names() if rule_names is None else rule_names)
    for i, name in enumerate(local):
        if name not in rules:
            raise ConfigError(
                f"config key local_rules[{i}]: {name!r} is not a rule of the workflow; expected some of {sorted(rules)}"
            )
    return local


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
    if error.validator in ("anyOf", "oneOf", "uniqueItems") and isinstance(error.instance, list):
        repeated = sorted({repr(v) for v in error.instance if error.instance.count(v) > 1})
        if repeated:
            return f"config key {where}: {', '.join(repeated)} given twice; expected each at most once"
    if error.validator == "oneOf":
        return (
            f"config key {where}: {json.dumps(error.instance, default=str)[:200]} matches none of the allowed forms "
            "(a url source {url, sha256, size}, a repo source {repo, repo_type, revision}, a path source {path}; "
            "released models: {repo, revision}, {tiny: {...}} or {path: DIR})"
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


SECRET_KEY_PATTERN = re.compile(r"(^|_)(token|secret|password|passwd|api_key|apikey|credentials?)($|_)", re.IGNORECASE)


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
    logprob_t = run.get("logprob_temperature")
    if (
        run.get("stage") == "grpo"
        and vllm.get("mode") is not None
        and vllm.get("importance_sampling_correction", True)
        and logprob_t is not None
        and logprob_t != run.get("temperature", 0.9)
    ):
        raise ConfigError(
            f"config key runs.{name}.logprob_temperature: {logprob_t} differs from the sampling temperature "
            f"{run.get('temperature', 0.9)}, which biases vLLM's importance-sampling correction (its log-probs are "
            "at the sampling temperature); expected vllm.importance_sampling_correction: false (the official "
            "trainer had none) or logprob_temperature: null"
        )
    res = run.get("resources") or {}
    lead = stop_signal_lead(run)
    if "runtime" in res and lead >= 60 * res["runtime"]:
        raise ConfigError(
            f"config key runs.{name}.resources.runtime: {res['runtime']} min is within the {lead} s before the "
            f"time limit at which SLURM tells the job to save and stop (shutdown_timeout + {SIGNAL_MARGIN} s), so "
            f"the job would stop as it starts; expected runtime > {lead / 60:g} min or a smaller shutdown_timeout"
        )
    check_run_accelerate_config(name, run)
    for key in run.get("trainer_args") or {}:
        if SECRET_KEY_PATTERN.search(key):
            raise ConfigError(
                f"config key runs.{name}.trainer_args.{key}: secrets do not belong in the configuration (it is "
                "copied into job scripts, logs and run.json); set them in the environment (e.g. HF_TOKEN)"
            )


#: TRL config fields the workflow sets itself (the run's folder, length, checkpoints, logging, seed, device):
#: ``trainer_args`` may not override them.
WORKFLOW_TRAINER_ARGS = frozenset(
    {"output_dir", "overwrite_output_dir", "run_name", "max_steps", "save_strategy", "logging_strategy",
     "logging_first_step", "logging_dir", "seed", "data_seed", "use_cpu", "resume_from_checkpoint", "save_only_model",
     "remove_unused_columns", "dataset_kwargs", "disable_tqdm", "push_to_hub", "hub_model_id", "hub_strategy",
     "deepspeed", "local_rank", "eval_strategy", "do_train", "gradient_checkpointing_kwargs",
     "activation_checkpointing_kwargs", "logging_nan_inf_filter"}
)  # fmt: skip
#: TRL config fields that a run key sets: ``trainer_args`` naming one points to the run key instead.
RUN_KEY_OF_TRAINER_ARG = {
    "num_train_epochs": "num_train_epochs", "learning_rate": "learning_rate", "lr_scheduler_type": "lr_scheduler_type",
    "warmup_ratio": "warmup_ratio", "warmup_steps": "warmup_ratio",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "max_grad_norm": "max_grad_norm",
    "weight_decay": "weight_decay", "bf16": "precision", "fp16": "precision",
    "gradient_checkpointing": "gradient_checkpointing", "activation_checkpointing": "gradient_checkpointing",
    "save_steps": "save_steps", "save_total_limit": "save_total_limit", "logging_steps": "logging_steps",
    "report_to": "report_to", "dataloader_num_workers": "dataloader_num_workers", "max_length": "max_length",
    "assistant_only_loss": "assistant_only_loss", "num_generations": "num_generations",
    "max_completion_length": "max_completion_length", "max_prompt_length": "max_prompt_length", "beta": "beta",
    "temperature": "temperature", "loss_type": "loss_type", "scale_rewards": "scale_rewards",
    "reward_weights": "reward_weights", "log_completions": "log_completions", "use_vllm": "vllm.mode",
    "vllm_mode": "vllm.mode", "vllm_gpu_memory_utilization": "vllm.gpu_memory_utilization",
    "vllm_importance_sampling_correction": "vllm.importance_sampling_correction",
}  # fmt: skip


def trainer_config_fields(stage: str) -> tuple[str, set[str]]:
    """(class name, field names) of TRL's config class for ``stage`` (imports TRL: only called when needed)."""
    import dataclasses

    from trl import GRPOConfig, SFTConfig

    cls = SFTConfig if stage == "sft" else GRPOConfig
    return cls.__name__, {f.name for f in dataclasses.fields(cls)}


def _close(name: str, candidates) -> str:
    import difflib

    near = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return f"; did you mean {near[0]!r}?" if near else ""


def check_trainer_args(name: str, run: Mapping) -> None:
    """``trainer_args`` names fields of TRL's config class for the run's stage, and none the workflow sets."""
    extra = run.get("trainer_args") or {}
    where = f"config key runs.{name}.trainer_args"
    for key in extra:
        if key in WORKFLOW_TRAINER_ARGS:
            raise ConfigError(
                f"{where}.{key}: set by the workflow itself (the run's checkpoint folder, length, saving, logging, "
                "seed and device follow from the run's keys); remove it"
            )
        if key in RUN_KEY_OF_TRAINER_ARG:
            raise ConfigError(f"{where}.{key}: has a run key of its own; set runs.{name}.{RUN_KEY_OF_TRAINER_ARG[key]}")
    if extra:
        cls, fields = trainer_config_fields(run["stage"])
        for key in extra:
            if key not in fields:
                raise ConfigError(f"{where}.{key}: not a field of TRL's {cls} (the {run['stage']} trainer's config)"
                                  f"{_close(key, fields)}")  # fmt: skip


def check_grpo_batch(name: str, run: Mapping) -> None:
    """A GRPO step's completions (per device x processes x accumulation) must be whole groups of num_generations."""
    from spatialreasoner.train.launch import training_processes

    if run.get("stage") != "grpo":
        return
    nodes = int((run.get("resources") or {}).get("nodes", 1) or 1)
    processes = max(1, training_processes(run)) * nodes
    per_device, accumulation = run.get("per_device_train_batch_size", 1), run.get("gradient_accumulation_steps", 1)
    generations = run.get("num_generations", 4)
    completions = per_device * processes * accumulation
    if completions % generations:
        raise ConfigError(
            f"config key runs.{name}.per_device_train_batch_size: run {name} makes {completions} completions per step "
            f"(per_device_train_batch_size {per_device} x {processes} training process(es) x "
            f"gradient_accumulation_steps {accumulation}), not a multiple of runs.{name}.num_generations "
            f"({generations}); expected whole groups of {generations} completions per prompt"
        )


def check_prompts(config: Mapping, schema_prompts=("system", "reasoning_3d")) -> None:
    """A ``prompts`` key is one the workflow knows or one a run refers to; anything else is most likely a typo."""
    referenced = {
        run.get(key) for run in config.get("runs", {}).values() for key in ("system_prompt", "instruction")
    } - {None}
    for key in config.get("prompts") or {}:
        if key not in schema_prompts and key not in referenced:
            raise ConfigError(
                f"config key prompts.{key}: not a prompt the workflow uses ({', '.join(schema_prompts)}) and no run "
                f"refers to it (runs.<run>.system_prompt or instruction){_close(key, schema_prompts)}"
            )


def check_pixel_limits(node, parts=()) -> None:
    """Wherever a mapping sets both ``min_pixels`` and ``max_pixels`` (vision, evaluate, a tiny model), min <= max."""
    if isinstance(node, Mapping):
        low, high = node.get("min_pixels"), node.get("max_pixels")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ConfigError(
                f"config key {key_path([*parts, 'min_pixels'])}: {low} is greater than "
                f"{key_path([*parts, 'max_pixels'])} ({high}); expected min_pixels <= max_pixels"
            )
        for key, value in node.items():
            if key != "paper":
                check_pixel_limits(value, (*parts, key))


def check_image_columns(config: Mapping) -> None:
    """The image sets of a dataset name different annotation columns (else the second would silently win)."""
    images = config.get("images", {})
    for name, dataset in config.get("datasets", {}).items():
        seen: dict[str, str] = {}
        for i, image_set in enumerate(dataset.get("images", [])):
            column = (images.get(image_set) or {}).get("column", "image_filename")
            if column in seen:
                raise ConfigError(
                    f"config key datasets.{name}.images[{i}]: image sets {seen[column]!r} and {image_set!r} both "
                    f"name the annotation column {column!r} (images.{image_set}.column); expected one image set per "
                    "column (image_filename: 3D QA rows, image_path: LLaVA rows)"
                )
            seen[column] = image_set


def check_pixels_from(config: Mapping, model: str, opts: Mapping) -> None:
    """``evaluate.models.<model>.pixels_from`` names a released model and is not combined with explicit limits."""
    source = opts.get("pixels_from")
    if source is None:
        return
    released = config.get("released", {})
    if source not in released:
        raise ConfigError(
            f"config key evaluate.models.{model}.pixels_from: {source!r} is not a released model; "
            f"expected one of {sorted(released)}"
        )
    given = [k for k in ("min_pixels", "max_pixels") if opts.get(k) is not None]
    if given:
        raise ConfigError(
            f"config key evaluate.models.{model}: pixels_from and {', '.join(given)} both set; the limits come from "
            f"{source!r}'s folder, so set only one of them"
        )


#: Folders the workflow itself writes models into: a ``path:`` model there would be read while it is written.
WORKFLOW_MODEL_FOLDERS = ("results/models", "results/checkpoints", "results/checkpoint_models", "resources/models")


def check_local_models(config: Mapping, workdir: str | Path = ".") -> None:
    """Every ``released.<name>.path`` is a complete model folder outside the workflow's own model folders.

    Checked when the configuration is read (before any job): the folder exists, holds a model config, readable
    weights (safetensors as long as their headers say), a tokenizer and an image processor. Relative paths are
    relative to ``workdir`` (Snakemake's working directory).
    """
    from spatialreasoner.errors import DataError
    from spatialreasoner.modeling import check_model_dir

    workdir = Path(workdir).resolve()
    for name, spec in (config.get("released") or {}).items():
        if "path" not in spec:
            continue
        key = f"config key released.{name}.path"
        folder = (workdir / Path(spec["path"]).expanduser()).resolve()
        if not folder.exists():
            raise ConfigError(f"{key}: model folder {folder} does not exist; expected a folder holding a model")
        if not folder.is_dir():
            raise ConfigError(f"{key}: {folder} is a file; expected a folder holding a model (config.json, weights, "
                              "tokenizer and processor files)")  # fmt: skip
        for inner in WORKFLOW_MODEL_FOLDERS:
            own = workdir / inner
            if folder == own or own in folder.parents:
                run = folder.relative_to(own).parts[0] if folder != own else ""
                hint = f"; name the run {run!r} in evaluate.models instead" if run in (config.get("runs") or {}) else ""
                raise ConfigError(
                    f"{key}: {folder} is inside {inner}/, which the workflow writes itself (a training output or a "
                    f"model folder it makes); expected a folder of your own{hint}"
                )
        try:
            check_model_dir(folder, verify=False)
        except DataError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def check_semantics(config: Mapping) -> None:
    """Cross-references the schema cannot express; raise ConfigError naming the key."""
    sources = config.get("sources", {})
    overlap = set(config.get("released", {})) & set(config.get("runs", {}))
    if overlap:
        raise ConfigError(f"config keys released and runs both define {sorted(overlap)}; a model name must be unique")
    run_order(config)
    check_local_models(config)
    check_max_runtime(config)

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
    check_image_columns(config)
    check_pixel_limits(config)
    check_prompts(config)
    datasets = config.get("datasets", {})
    prompts = config.get("prompts", {})
    for name, run in config.get("runs", {}).items():
        check_run(name, run, prompts)
        check_grpo_batch(name, run)
        check_trainer_args(name, run)
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
        check_pixels_from(config, model, opts or {})
        paper_row = (opts or {}).get("paper")
        if paper_row is not None:
            rows = {row for bench in config.get("paper", {}).values() for row in bench}
            if paper_row not in rows:
                raise ConfigError(
                    f"config key evaluate.models.{model}.paper: {paper_row!r} is not a model under paper; "
                    f"expected one of {sorted(rows)}"
                )


def _batch_layout(run: Mapping) -> tuple[int, int, int]:
    """(per-device batch, training processes over all nodes, gradient accumulation) of a run."""
    from spatialreasoner.train.launch import training_processes

    nodes = int((run.get("resources") or {}).get("nodes", 1) or 1)
    processes = max(1, training_processes(run)) * nodes
    return int(run.get("per_device_train_batch_size", 1)), processes, int(run.get("gradient_accumulation_steps", 1))


def resolve_global_batch(config: dict) -> None:
    """A run's ``global_batch_size`` is kept whatever its GPUs: ``gradient_accumulation_steps`` is set to the global
    batch / (per-device batch x training processes), or the run is refused naming both numbers when that does not
    divide. Runs without it keep their own accumulation (their global batch then follows the GPUs)."""
    for name, run in (config.get("runs") or {}).items():
        target = run.get("global_batch_size")
        if target is None:
            continue
        per_device, processes, accumulation = _batch_layout(run)
        per_step = per_device * processes
        unit = "completions" if run.get("stage") == "grpo" else "samples"
        key = f"config key runs.{name}.global_batch_size"
        if target % per_step:
            raise ConfigError(
                f"{key}: the recipe's global batch of {target} {unit} cannot be kept: "
                f"per_device_train_batch_size {per_device} x {processes} training process(es) makes {per_step} per "
                f"accumulation step, and no gradient accumulation turns {per_step} into {target}; expected a "
                f"per_device_train_batch_size dividing {target}/{processes} or, to train with another global batch, "
                f"runs.{name}.global_batch_size set to a multiple of {per_step} (e.g. {per_step})"
            )
        derived = target // per_step
        if accumulation not in (1, derived):
            raise ConfigError(
                f"{key}: {target} {unit} needs gradient_accumulation_steps {derived} with {per_step} per step, but "
                f"runs.{name}.gradient_accumulation_steps is {accumulation}; expected one of the two keys only"
            )
        run["gradient_accumulation_steps"] = derived


def global_batch_lines(config: Mapping) -> list[str]:
    """One line per run stating its effective global batch and how it is made (shown by validate-config and at
    workflow start)."""
    lines = []
    for name, run in (config.get("runs") or {}).items():
        per_device, processes, accumulation = _batch_layout(run)
        total = per_device * processes * accumulation
        how = f"{per_device} per device x {processes} training process(es) x {accumulation} accumulation step(s)"
        if run.get("stage") == "grpo":
            generations = int(run.get("num_generations", 4))
            what = f"{total} completions ({total / generations:g} prompts x {generations} generations)"
        else:
            what = f"{total} samples"
        kept = f" (kept by runs.{name}.global_batch_size)" if run.get("global_batch_size") is not None else ""
        lines.append(f"run {name}: global batch {what} per optimizer step = {how}{kept}")
    return lines


def attempt_chain(run: Mapping, max_runtime: int | None) -> tuple[int, int]:
    """(minutes per job, attempts) of a training run under a partition limit of ``max_runtime`` minutes: a run longer
    than the limit needs ceil(runtime / limit) jobs that each resume from the newest checkpoint, plus one spare (a
    job stopped early, a failed node); otherwise one job of its own runtime."""
    runtime = int((run.get("resources") or {}).get("runtime", 1440))
    if max_runtime is None or runtime <= max_runtime:
        return runtime, 1
    return int(max_runtime), -(-runtime // int(max_runtime)) + 1


def check_max_runtime(config: Mapping) -> None:
    """A partition limit must leave a training job time to work before SLURM's stop warning."""
    from spatialreasoner.train.launch import stop_signal_lead

    limit = config.get("max_runtime")
    if limit is None:
        return
    for name, run in (config.get("runs") or {}).items():
        lead = stop_signal_lead(run)
        if attempt_chain(run, limit)[1] > 1 and lead >= 60 * limit:
            raise ConfigError(
                f"config key max_runtime: {limit} min is within the {lead} s before the time limit at which SLURM "
                f"tells run {name}'s job to save and stop, so each job of its chain would stop as it starts; expected "
                f"max_runtime > {lead / 60:g} min or a smaller runs.{name}.shutdown_timeout"
            )


def attempt_chain_lines(config: Mapping) -> list[str]:
    """One line per training run that a partition limit (``max_runtime``) turns into a chain of jobs."""
    lines = []
    for name, run in (config.get("runs") or {}).items():
        minutes, attempts = attempt_chain(run, config.get("max_runtime"))
        if attempts > 1:
            lines.append(
                f"run {name}: runtime {run['resources']['runtime']} min > max_runtime {minutes} min: up to "
                f"{attempts} jobs of {minutes} min ({attempts - 1} to finish + 1 spare), each resuming from the "
                "newest checkpoint"
            )
    return lines


def apply_evaluate_only(config: dict) -> None:
    """``evaluate.only: {models, benchmarks}`` replaces ``evaluate.models`` / ``evaluate.benchmarks`` by exactly the
    entries it names (in its order), and drops ``evaluate.checkpoints`` of runs no longer evaluated. Overlays are
    merged key by key and cannot remove a model; this key can. Unknown names are errors naming the key."""
    evaluate = config.get("evaluate") or {}
    only = evaluate.get("only")
    if not only:
        return
    models, benchmarks = evaluate.get("models", {}), evaluate.get("benchmarks", [])
    for i, name in enumerate(only.get("models") or []):
        if name not in models:
            known = "a released model or a run: add it under evaluate.models too" if name in model_names(config) else (
                "not a released model or a run either")  # fmt: skip
            raise ConfigError(
                f"config key evaluate.only.models[{i}]: {name!r} is not in evaluate.models ({known}); expected one "
                f"of {list(models)}"
            )
    for i, bench in enumerate(only.get("benchmarks") or []):
        if bench not in benchmarks:
            raise ConfigError(
                f"config key evaluate.only.benchmarks[{i}]: {bench!r} is not in evaluate.benchmarks; expected one of "
                f"{benchmarks}"
            )
    if only.get("models"):
        evaluate["models"] = {name: models[name] for name in only["models"]}
        checkpoints = evaluate.get("checkpoints") or {}
        evaluate["checkpoints"] = {run: steps for run, steps in checkpoints.items() if run in evaluate["models"]}
    if only.get("benchmarks"):
        evaluate["benchmarks"] = list(only["benchmarks"])


def validate_config(config: dict, schema: dict | None = None, rule_names=None) -> dict:
    """Schema (with defaults) then cross-reference checks; returns the same, completed, dict. ``rule_names``: the
    workflow's rules that ``local_rules`` may name (by default those of this checkout's workflow files)."""
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(config).__name__}")
    check_finite_numbers(config)
    validate_schema(config, schema)
    check_local_rules(config, rule_names)
    # Counts the job's GPUs cannot hold come first: the global batch is made of them.
    check_counts(config)
    resolve_global_batch(config)
    check_semantics(config)
    apply_evaluate_only(config)
    checkpoint_steps(config)
    check_judge_url(config)
    return config


def check_judge_url(config: Mapping) -> None:
    """``evaluate.judge.base_url`` is an http(s) URL without credentials (it is shown in job commands and logs; the
    key comes from the variable that ``api_key_env`` names)."""
    from urllib.parse import urlsplit

    url = (config.get("evaluate", {}).get("judge") or {}).get("base_url")
    if url is None:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(
            f"config key evaluate.judge.base_url: not a URL ({exc}); expected http(s)://host[:port]/v1"
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"config key evaluate.judge.base_url: {url!r} is not an http(s) URL; expected e.g. http://localhost:8000/v1"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            "config key evaluate.judge.base_url: holds credentials (user:password@), which would be shown in job "
            "commands; expected a URL without them, with the key in the variable evaluate.judge.api_key_env names"
        )
    try:  # urlsplit checks the port only when it is read (a port of 99999 or "80a" passes the checks above)
        problem = "port 0 is not one a server listens on" if parts.port == 0 else None
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise ConfigError(
            f"config key evaluate.judge.base_url: {redact_url(url)!r} has an invalid port ({problem}); expected "
            "http(s)://host[:port]/v1 with a port from 1 to 65535"
        )


# --- numbers and counts ---------------------------------------------------------------------------------------------


def check_finite_numbers(node, parts=()) -> None:
    """Every number of the configuration is finite: YAML's ``.inf`` and ``.nan`` pass a schema's type and bounds
    (a NaN compares false with every bound), and would reach the trainer as a learning rate."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key {key_path(parts)}: {node} is not a finite number; expected a finite number")
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_finite_numbers(value, (*parts, key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite_numbers(value, (*parts, i))


def check_counts(config: Mapping) -> None:
    """Process and tensor-parallel counts that the job's GPUs cannot hold, refused with the numbers."""
    for name, run in config.get("runs", {}).items():
        gpus = int((run.get("resources") or {}).get("gpus", 1))
        vllm = run.get("vllm") or {}
        available = gpus - (int(vllm.get("server_gpus", 1)) if vllm.get("mode") == "server" else 0)
        processes = run.get("num_processes")
        if gpus and processes and processes > available:
            server = " after the vLLM server's vllm.server_gpus" if vllm.get("mode") == "server" else ""
            raise ConfigError(
                f"config key runs.{name}.num_processes: {processes} training processes for the {available} GPU(s) "
                f"of the job (resources.gpus {gpus}{server}); expected at most one process per GPU"
            )
    evaluate = config.get("evaluate", {})
    if evaluate.get("backend") != "vllm":
        return
    tp = int((evaluate.get("vllm") or {}).get("tensor_parallel_size", 1))
    gpus = int((evaluate.get("resources") or {}).get("gpus", 1))
    if tp > 1 and gpus == 0:
        raise ConfigError(
            f"config key evaluate.vllm.tensor_parallel_size: {tp} on a CPU job (evaluate.resources.gpus 0); vLLM's "
            "CPU engine runs one process per NUMA node, so expected tensor_parallel_size 1 on CPU"
        )
    if gpus and tp > gpus:
        raise ConfigError(
            f"config key evaluate.vllm.tensor_parallel_size: {tp} GPUs per engine, but the inference job has "
            f"{gpus} GPU(s) (evaluate.resources.gpus); expected tensor_parallel_size <= {gpus}"
        )


def saved_steps(save_steps: int, stop: int) -> list[int]:
    """The checkpoints a run stopping at ``stop`` saves: every multiple of ``save_steps`` and the stop itself."""
    return sorted({*range(save_steps, stop + 1, save_steps), stop})


def checkpoint_steps(config: Mapping) -> dict[str, list[int]]:
    """The intermediate checkpoints to evaluate, ``{run: [steps]}``, from ``evaluate.checkpoints``; a step without a
    checkpoint (or one the run's ``save_total_limit`` deletes) is a ConfigError naming the key."""
    steps = {}
    runs, evaluated = config.get("runs", {}), set(config.get("evaluate", {}).get("models", {}))
    for run, spec in (config.get("evaluate", {}).get("checkpoints") or {}).items():
        key = f"config key evaluate.checkpoints.{run}"
        if run not in runs or run not in evaluated:
            raise ConfigError(f"{key}: {run!r} is not an evaluated run; expected one of runs in evaluate.models")
        cfg = runs[run]
        save, stop = int(cfg.get("save_steps", 1000)), cfg.get("stop_steps")
        if spec == "all":
            if stop is None:
                raise ConfigError(f"{key}: 'all' needs runs.{run}.stop_steps; list the steps instead")
            spec = list(range(save, int(stop), save))
        bad = [s for s in spec if s % save or (stop is not None and s >= int(stop))]
        if bad:
            raise ConfigError(
                f"{key}: step(s) {bad} have no intermediate checkpoint; expected multiples of save_steps={save}"
                + (f" below stop_steps={stop} (the final model is evaluated anyway)" if stop is not None else "")
            )
        steps[run] = sorted(set(spec))
        limit = cfg.get("save_total_limit")
        if limit is not None and steps[run]:
            if stop is None:
                raise ConfigError(
                    f"config key runs.{run}.save_total_limit: {limit} with checkpoints to evaluate ({key}) needs "
                    f"runs.{run}.stop_steps, to know which checkpoints the limit keeps; set stop_steps or "
                    "save_total_limit: null"
                )
            kept = saved_steps(save, int(stop))[-int(limit) :]
            deleted = [s for s in steps[run] if s not in kept]
            if deleted:
                raise ConfigError(
                    f"config key runs.{run}.save_total_limit: {limit} keeps only checkpoint(s) {kept}, deleting "
                    f"step(s) {deleted} that {key} evaluates; expected save_total_limit >= "
                    f"{len(saved_steps(save, int(stop))) - saved_steps(save, int(stop)).index(min(steps[run]))} "
                    "or null"
                )
    return steps


def _refuse_duplicate_keys(node, path: Path, parts: list) -> None:
    """Walk a composed YAML node; a mapping that repeats a key is a ConfigError naming its full key path."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            if key == "<<":  # a YAML merge key may repeat; its mappings are checked where they are defined
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(
                    f"config file {path}, line {line}: config key {key_path([*parts, key])} is given twice "
                    f"(first at line {first_line[key]}); YAML keeps only the last value, so remove one"
                )
            first_line[key] = line
            _refuse_duplicate_keys(value_node, path, [*parts, key])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, [*parts, i])


def load_yaml_strict(path: str | Path):
    """A YAML (or JSON) config file's content, refusing repeated keys (which plain loaders resolve silently by
    keeping the last value). Raises ConfigError naming the file, the line and the key's full path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, path, [])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def check_config_files(paths) -> None:
    """Load every config file strictly (duplicate keys refused); used by the Snakefile on ``workflow.configfiles``,
    which Snakemake itself loads keeping the last of repeated keys."""
    for path in paths:
        load_yaml_strict(path)


def merge_configs(base: dict, update: Mapping) -> dict:
    """Merge ``update`` into ``base`` as Snakemake merges several ``--configfile``s (mappings recursively)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_configs(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(*paths: str | Path) -> dict:
    """The validated configuration of one or several config files (later files merged into earlier ones)."""
    if not paths:
        raise ConfigError("no config file given")
    config: dict = {}
    for path in paths:
        content = load_yaml_strict(path)
        if not isinstance(content, dict):
            raise ConfigError(f"config file {path}: the configuration must be a mapping, got {type(content).__name__}")
        merge_configs(config, content)
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{', '.join(map(str, paths))}: {exc}") from exc


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "configfile",
        nargs="+",
        help="config YAML file(s), e.g. config/config.yaml (later ones merged in, as Snakemake)",
    )


def run(args: argparse.Namespace) -> None:
    config = load_config(*args.configfile)
    print(yaml.safe_dump(config, sort_keys=False, width=120))
    for line in global_batch_lines(config):
        print(line, file=sys.stderr)
