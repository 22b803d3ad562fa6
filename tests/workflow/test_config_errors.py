"""Configuration mistakes that a schema alone lets through stop the workflow before any job, naming the key."""

import copy
import subprocess
import sys

import pytest
import yaml

from spatialreasoner.config import RUN_KEY_OF_TRAINER_ARG, WORKFLOW_TRAINER_ARGS, load_config, validate_config
from spatialreasoner.errors import ConfigError

from .conftest import rejected

DUPLICATE = """\
seed: 1
runs:
  SFT:
    stage: sft
    learning_rate: 1.0e-5
    init: base
    learning_rate: 1.0e-3
"""


def test_duplicate_yaml_key_is_refused_with_its_full_path(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "runs.SFT.learning_rate" in message
    assert "line 7" in message and "first at line 5" in message


def test_duplicate_key_in_a_list_item_names_the_index(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("evaluate:\n  benchmarks: [3DSRBench]\n  models:\n    m: {paper: a, paper: b}\n")
    with pytest.raises(ConfigError, match=r"evaluate\.models\.m\.paper is given twice"):
        load_config(path)


def test_validate_config_cli_merges_files_and_refuses_duplicates(repo_root, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "validate-config", "config/config.yaml", "config/ablations.yaml"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    merged = yaml.safe_load(ok.stdout)
    assert {"SpatialReasoner", "SpatialReasoner-Zero-3DRwd"} <= set(merged["runs"])
    bad = tmp_path / "extra.yaml"
    bad.write_text("runs:\n  X: {stage: sft}\n  X: {stage: grpo}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "validate-config", "config/demo.yaml", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "runs.X is given twice" in proc.stderr and "Traceback" not in proc.stderr


def test_snakemake_refuses_a_config_file_with_a_repeated_key(repo_root, tmp_path):
    """Snakemake's own loader keeps the last value; the workflow reads its config files again, strictly."""
    text = (repo_root / "config" / "demo.yaml").read_text()
    assert "\nseed: 42\n" in text
    bad = tmp_path / "demo-dup.yaml"
    bad.write_text(text.replace("\nseed: 42\n", "\nseed: 42\nseed: 7\n", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key seed is given twice" in out and str(bad) in out
    assert "Job stats" not in out


def test_unknown_prompts_key_is_a_typo(demo_config):
    config = copy.deepcopy(demo_config)
    config.setdefault("prompts", {})["sytem"] = "You are a helpful assistant."
    rejected(config, "prompts.sytem", "did you mean 'system'")


def test_extra_prompt_referred_to_by_a_run_is_accepted(demo_config):
    config = copy.deepcopy(demo_config)
    config.setdefault("prompts", {})["short"] = "Answer with a letter."
    config["runs"]["SpatialReasoner"]["system_prompt"] = "short"
    validate_config(config)


@pytest.mark.parametrize(
    "where",
    [("evaluate",), ("vision",), ("released", "tiny-Qwen2.5-VL", "tiny")],
    ids=["evaluate", "vision", "tiny"],
)
def test_min_pixels_above_max_pixels(demo_config, where):
    config = copy.deepcopy(demo_config)
    node = config
    for key in where:
        node = node.setdefault(key, {})
    node.update({"min_pixels": 4000, "max_pixels": 3136})
    rejected(config, ".".join([*where, "min_pixels"]) + ": 4000 is greater than", "max_pixels (3136)")


@pytest.mark.parametrize("key", ["output_dir", "max_steps", "save_strategy", "seed", "resume_from_checkpoint"])
def test_trainer_args_may_not_set_what_the_workflow_controls(demo_config, key):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["trainer_args"] = {key: "x"}
    rejected(config, f"runs.SpatialReasoner-SFT.trainer_args.{key}", "set by the workflow")


def test_trainer_args_naming_a_run_key_points_to_it(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["trainer_args"] = {"learning_rate": 1e-3}
    rejected(config, "runs.SpatialReasoner.trainer_args.learning_rate", "set runs.SpatialReasoner.learning_rate")


def test_misspelt_trainer_arg_is_a_config_error_naming_trl_class(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["trainer_args"] = {"epsilonn": 0.2}
    rejected(config, "runs.SpatialReasoner.trainer_args.epsilonn", "GRPOConfig", "did you mean 'epsilon'")
    config = copy.deepcopy(demo_config)
    # a GRPO-only field is unknown to the SFT trainer
    config["runs"]["SpatialReasoner-SFT"]["trainer_args"] = {"epsilon": 0.2}
    rejected(config, "runs.SpatialReasoner-SFT.trainer_args.epsilon", "SFTConfig")
    config["runs"]["SpatialReasoner-SFT"]["trainer_args"] = {"neftune_noise_alpha": 5.0}
    validate_config(config)


def test_every_trainer_argument_the_workflow_sets_is_protected(tmp_path):
    """A key that training_kwargs sets must be refused in trainer_args (it would override the workflow's value)."""
    from spatialreasoner.train.common import resolve_run_config, training_kwargs

    cfg = resolve_run_config({"stage": "sft", "init": "m", "data": "d", "report_to": []})
    keys = set(training_kwargs(cfg, tmp_path, 10, 0, "r"))
    unprotected = keys - WORKFLOW_TRAINER_ARGS - set(RUN_KEY_OF_TRAINER_ARG)
    assert not unprotected


def test_grpo_batch_not_whole_groups_names_the_run(demo_config, paper_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["per_device_train_batch_size"] = 3
    config["runs"]["SpatialReasoner"]["num_processes"] = 2
    config["runs"]["SpatialReasoner"]["num_generations"] = 4
    rejected(config, "runs.SpatialReasoner.per_device_train_batch_size", "run SpatialReasoner makes 6 completions")
    # the paper run: 12 per GPU x 3 training GPUs (one of the 4 serves vLLM) = 36, a multiple of 4; 5 is not
    config = copy.deepcopy(paper_config)
    config["runs"]["SpatialReasoner"]["num_generations"] = 5
    rejected(config, "runs.SpatialReasoner", "36 completions", "3 training process(es)")


@pytest.mark.parametrize(
    "where", [("seed",), ("evaluate", "random_seed"), ("synthetic", "seed")], ids=["seed", "random_seed", "synthetic"]
)
def test_negative_seed_is_refused(demo_config, where):
    config = copy.deepcopy(demo_config)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = -1
    rejected(config, ".".join(where), "-1 is less than the minimum of 0")


def test_two_image_sets_on_one_annotation_column(demo_config):
    config = copy.deepcopy(demo_config)
    config["images"]["llava"]["column"] = "image_filename"
    rejected(config, "datasets.sft.images[1]", "'openimages' and 'llava'", "'image_filename'")


def test_paper_config_offers_the_official_scripts_annotation_repositories(paper_config):
    config = copy.deepcopy(paper_config)
    assert config["datasets"]["sft"]["annotations"] == "SpatialReasonerTrain-SFT"
    assert config["sources"]["OpenImages_3DSR_apr23_sampled24k_NT_llava_24k"]["repo"] == (
        "ccvl/OpenImages_3DSR_apr23_sampled24k_NT_llava_24k"
    )
    assert config["sources"]["OpenImages_3DSR_mar16_filtered1200"]["repo"] == "ccvl/OpenImages_3DSR_mar16_filtered1200"
    config["datasets"]["sft"]["annotations"] = "OpenImages_3DSR_apr23_sampled24k_NT_llava_24k"
    config["datasets"]["rl"]["annotations"] = "OpenImages_3DSR_mar16_filtered1200"
    validate_config(config)


def test_a_training_time_limit_inside_the_stop_warning_is_refused(demo_config):
    # SLURM sends the stop warning shutdown_timeout + 60 s before the limit: a shorter job would stop as it starts.
    config = copy.deepcopy(demo_config)
    run = config["runs"]["SpatialReasoner-SFT"]
    run["resources"]["runtime"] = 10
    rejected(config, "runs.SpatialReasoner-SFT.resources.runtime: 10 min", "600 s before the time limit")
    run["shutdown_timeout"] = 240
    validate_config(copy.deepcopy(config))
