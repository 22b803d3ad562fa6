"""The `runs` configuration: schema defaults agree with the trainer's, the paper recipes, and the ablation overlay."""

from __future__ import annotations

import yaml

from spatialreasoner.config import load_schema, validate_config
from spatialreasoner.train.common import RUN_DEFAULTS, resolve_run_config
from spatialreasoner.train.launch import training_processes


def schema(repo_root):
    return load_schema(repo_root / "workflow/schemas/config.schema.yaml")


def test_schema_defaults_equal_the_trainer_defaults(repo_root):
    props = schema(repo_root)["properties"]["runs"]["additionalProperties"]["properties"]
    for key, value in RUN_DEFAULTS.items():
        if key == "vllm":
            assert {k: v["default"] for k, v in props["vllm"]["properties"].items()} == value
        else:
            assert props[key]["default"] == value, key


def test_paper_runs_follow_the_official_recipes(repo_root):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    validate_config(config, schema(repo_root))
    sft = resolve_run_config(config["runs"]["SpatialReasoner-SFT"])
    assert (sft["learning_rate"], sft["num_train_epochs"], sft["stop_steps"]) == (5e-6, 10, 7000)
    assert (sft["per_device_train_batch_size"], sft["resources"]["gpus"], sft["max_length"]) == (6, 4, None)
    for name, stop in (("SpatialReasoner-Zero", 10000), ("SpatialReasoner", 6000)):
        run = resolve_run_config(config["runs"][name])
        assert (run["learning_rate"], run["num_train_epochs"], run["stop_steps"], run["beta"]) == (5e-7, 100, stop, 0)
        assert (run["max_prompt_length"], run["max_completion_length"]) == (2048, 512)
        # 36 completions per step = 9 prompts x 4 generations on 3 training GPUs (+1 vLLM GPU).
        procs = training_processes(run)
        assert procs == 3 and run["per_device_train_batch_size"] * procs == 36 == 9 * run["num_generations"]
    assert config["seed"] == 42 and "<think>" in config["prompts"]["system"]


def test_ablations_are_config_only(repo_root):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    ablations = yaml.safe_load((repo_root / "config/ablations.yaml").read_text())
    for section, entries in ablations.items():  # as Snakemake merges a second --configfile
        config[section].update(entries)
    validate_config(config, schema(repo_root))
    assert config["runs"]["SpatialReasoner-SFT-Basic3D"]["data"] == "basic3d"
    assert config["datasets"]["basic3d"]["annotations"] == "SpatialReasoner-Basic3D-QA"
    zero3d = config["runs"]["SpatialReasoner-Zero-3DRwd"]
    assert set(zero3d["rewards"]) == {"accuracy", "format", "process", "reasoning_steps"}
    assert zero3d["instruction"] in config["prompts"]
