"""Bad configurations are rejected before any job runs, with a message naming the key and what was expected."""

import copy
import subprocess
import sys

import yaml

from spatialreasoner.config import run_order, validate_config

from .conftest import rejected


def test_both_shipped_configs_are_valid(paper_config, demo_config):
    validate_config(copy.deepcopy(paper_config))
    validate_config(copy.deepcopy(demo_config))


def test_defaults_are_filled_from_the_schema(demo_config):
    config = copy.deepcopy(demo_config)
    del config["seed"]
    config["evaluate"]["models"]["SpatialReasoner"] = {}
    validate_config(config)
    assert config["seed"] == 42
    assert config["evaluate"]["models"]["SpatialReasoner"]["system_prompt"] is True
    assert config["runs"]["SpatialReasoner-SFT"]["resources"]["nodes"] == 1


def test_paper_config_has_the_official_recipe(paper_config):
    config = validate_config(copy.deepcopy(paper_config))
    assert config["released"]["Qwen2.5-VL-7B-Instruct"]["repo"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config["runs"]["SpatialReasoner"]["init"] == "SpatialReasoner-SFT"
    assert [
        config["runs"][r]["stop_steps"] for r in ("SpatialReasoner-SFT", "SpatialReasoner-Zero", "SpatialReasoner")
    ] == [
        7000,
        10000,
        6000,
    ]
    assert config["paper"]["3DSRBench"]["SpatialReasoner"]["overall"] == 60.3
    assert config["vision"] == {"min_pixels": 59716, "max_pixels": 200704}
    assert config["seed"] == 42


def test_wrong_type_names_the_key(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["stop_steps"] = "forty"
    rejected(config, "runs.SpatialReasoner-SFT.stop_steps", "'forty' is not of type 'integer'")


def test_missing_key_names_it(demo_config):
    config = copy.deepcopy(demo_config)
    del config["runs"]["SpatialReasoner"]["init"]
    rejected(config, "runs.SpatialReasoner", "'init' is a required property")
    config = copy.deepcopy(demo_config)
    del config["evaluate"]
    rejected(config, "'evaluate' is a required property")


def test_unknown_key_is_rejected(demo_config):
    config = copy.deepcopy(demo_config)
    config["evalute"] = {}
    rejected(config, "evalute", "config/README.md")


def test_unknown_init_run(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["init"] = "SpatialReasoner-SFTT"
    rejected(config, "runs.SpatialReasoner.init", "'SpatialReasoner-SFTT'", "expected one of")


def test_cycle_between_runs(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["init"] = "SpatialReasoner"
    config["runs"]["SpatialReasoner-SFT"]["stage"] = "grpo"
    config["runs"]["SpatialReasoner-SFT"]["data"] = "rl"
    message = rejected(config, "cycle")
    assert "SpatialReasoner-SFT" in message and "SpatialReasoner ->" in message


def test_unknown_benchmark_name(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["benchmarks"] = ["3DSRBench", "CVBench"]
    rejected(config, "evaluate.benchmarks[1]", "'CVBench'")
    config = copy.deepcopy(demo_config)
    config["benchmarks"]["MMBench"] = {"source": "CV-Bench-3D.tsv"}
    rejected(config, "benchmarks", "'MMBench'")


def test_evaluated_model_must_exist(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["models"]["GPT-4o"] = {}
    rejected(config, "evaluate.models.GPT-4o", "not a released model or a run")


def test_run_data_must_fit_its_stage(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["data"] = "rl"
    rejected(config, "runs.SpatialReasoner-SFT.data", "kind 'sft'")


def test_run_order_puts_init_runs_first(paper_config):
    order = run_order(validate_config(copy.deepcopy(paper_config)))
    assert order.index("SpatialReasoner-SFT") < order.index("SpatialReasoner")


def test_workflow_stops_before_any_job(repo_root, demo_config, tmp_path):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["init"] = "nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "runs.SpatialReasoner.init" in out and "'nowhere'" in out
    assert "Job stats" not in out


def test_unknown_run_or_dataset_key_is_a_typo(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["learning_rat"] = 1e-3
    rejected(config, "runs.SpatialReasoner-SFT", "'learning_rat' was unexpected")
    config = copy.deepcopy(demo_config)
    config["datasets"]["sft"]["on_bad_images"] = "drop"
    rejected(config, "datasets.sft", "'on_bad_images' was unexpected")


def test_run_prompt_keys_must_exist(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["instruction"] = "reasoning3d"
    rejected(config, "runs.SpatialReasoner.instruction", "'reasoning3d' is not a key of prompts")


def test_reward_weights_match_rewards(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["reward_weights"] = [1.0]
    rejected(config, "runs.SpatialReasoner.reward_weights", "1 weights for 2 rewards")


def test_vllm_server_leaves_gpus_to_train(paper_config):
    config = copy.deepcopy(paper_config)
    config["runs"]["SpatialReasoner"]["resources"]["gpus"] = 1
    rejected(config, "runs.SpatialReasoner.vllm.server_gpus", "expected resources.gpus > server_gpus")


def test_warmup_ratio_below_one(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["warmup_ratio"] = 1
    rejected(config, "runs.SpatialReasoner.warmup_ratio")


def test_secrets_are_refused_in_trainer_args(demo_config):
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner"]["trainer_args"] = {"hub_token": "hf_abc"}
    message = rejected(config, "runs.SpatialReasoner.trainer_args.hub_token", "environment")
    assert "hf_abc" not in message
    for key in ("token", "wandb_api_key", "HUB_PASSWORD", "secret_key"):
        config["runs"]["SpatialReasoner"]["trainer_args"] = {key: "x"}
        rejected(config, f"runs.SpatialReasoner.trainer_args.{key}", "environment")


def test_trainer_args_about_tokens_are_not_taken_for_secrets(demo_config):
    # A setting that counts tokens is no credential (the paper config sets this one for the official loss).
    config = copy.deepcopy(demo_config)
    config["runs"]["SpatialReasoner-SFT"]["trainer_args"] = {"average_tokens_across_devices": False}
    validate_config(config)
