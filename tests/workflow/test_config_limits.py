"""Configurations that cannot work are refused by the one validation that ``validate-config`` and the Snakefile
share: numbers that are not finite, counts larger than the job's GPUs, checkpoints that would not exist, rules that
are not the workflow's."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import yaml

from spatialreasoner.config import validate_config

from .conftest import rejected

SFT = "SpatialReasoner-SFT"


def with_run(config, run, **keys):
    config = copy.deepcopy(config)
    config["runs"][run].update(keys)
    return config


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("key", ["learning_rate", "num_train_epochs", "max_grad_norm", "weight_decay", "beta"])
def test_a_run_number_that_is_not_finite_is_refused(demo_config, key, value):
    rejected(with_run(demo_config, SFT, **{key: value}), f"config key runs.{SFT}.{key}:", "finite number")


@pytest.mark.parametrize(
    "where",
    [
        ("evaluate", "vllm", "gpu_memory_utilization"),
        ("runs", "SpatialReasoner", "temperature"),
        ("runs", "SpatialReasoner", "reward_weights", 1),
        ("paper", "3DSRBench", "SpatialReasoner", "Overall"),
        ("runs", SFT, "trainer_args", "adam_beta1"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_anywhere(demo_config, where):
    config = copy.deepcopy(demo_config)
    node = config
    for part in where[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {} if part != "reward_weights" else [1.0, 1.0])
        else:
            node = node[part]
    node[where[-1]] = math.nan
    dotted = ".".join(p if isinstance(p, str) else "" for p in where).rstrip(".")
    message = rejected(config, "finite number")
    assert dotted in message, message


def test_yaml_infinity_is_refused_by_validate_config(repo_root, tmp_path, demo_config):
    text = (repo_root / "config" / "demo.yaml").read_text()
    path = tmp_path / "inf.yaml"
    path.write_text(text.replace("learning_rate: 3.0e-3", "learning_rate: .inf", 1))
    assert yaml.safe_load(path.read_text())["runs"][SFT]["learning_rate"] == math.inf
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "validate-config", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert f"config key runs.{SFT}.learning_rate: inf is not a finite number" in proc.stderr


def test_finite_numbers_still_pass(demo_config):
    validate_config(with_run(demo_config, SFT, learning_rate=1e-300, max_grad_norm=0.0))


# --- evaluate.checkpoints: the same validation as the Snakefile's ---------------------------------------------------


def test_checkpoint_step_off_save_steps_is_refused_by_validate_config(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["checkpoints"][SFT] = [100]
    rejected(config, f"config key evaluate.checkpoints.{SFT}", "[100]", "multiples of save_steps=130")


def test_checkpoint_of_a_run_that_is_not_evaluated_is_refused_by_validate_config(demo_config):
    config = copy.deepcopy(demo_config)
    del config["evaluate"]["models"][SFT]
    rejected(config, f"config key evaluate.checkpoints.{SFT}", "not an evaluated run")


def test_save_total_limit_that_deletes_an_evaluated_checkpoint_is_refused(demo_config):
    # Every save_steps-th step and the last are saved; a limit keeps the newest only.
    run = demo_config["runs"][SFT]
    saved = [*range(run["save_steps"], run["stop_steps"], run["save_steps"]), run["stop_steps"]]
    evaluated = demo_config["evaluate"]["checkpoints"][SFT]
    needed = len(saved) - saved.index(min(evaluated))  # from the oldest evaluated checkpoint on
    rejected(
        with_run(demo_config, SFT, save_total_limit=needed - 1),
        f"config key runs.{SFT}.save_total_limit: {needed - 1}",
        f"[{min(evaluated)}",
        f"evaluate.checkpoints.{SFT}",
    )
    validate_config(with_run(demo_config, SFT, save_total_limit=needed))


# --- counts that cannot work -----------------------------------------------------------------------------------------


def test_vllm_tensor_parallel_larger_than_the_job_gpus_is_refused(paper_config):
    config = copy.deepcopy(paper_config)
    config["evaluate"]["backend"] = "vllm"
    config["evaluate"].setdefault("resources", {})["gpus"] = 2
    config["evaluate"].setdefault("vllm", {})["tensor_parallel_size"] = 4
    rejected(config, "config key evaluate.vllm.tensor_parallel_size: 4", "2 GPU")


def test_vllm_tensor_parallel_on_cpu_is_refused(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["backend"] = "vllm"
    config["evaluate"]["vllm"] = {"tensor_parallel_size": 2}
    rejected(config, "config key evaluate.vllm.tensor_parallel_size: 2", "CPU")


def test_num_processes_larger_than_the_gpus_of_a_gpu_run_is_refused(paper_config):
    config = copy.deepcopy(paper_config)
    run = next(iter(config["runs"]))
    config["runs"][run]["resources"] = {"gpus": 4}
    config["runs"][run]["num_processes"] = 8
    rejected(config, f"config key runs.{run}.num_processes: 8", "4 GPU")


# --- messages ----------------------------------------------------------------------------------------------------


def test_repeated_protocol_is_named(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["protocol"] = ["answer_tag", "full_text", "answer_tag"]
    message = rejected(config, "config key evaluate.protocol", "'answer_tag'", "twice")
    assert "not valid under any of the given schemas" not in message


def test_judge_base_url_must_be_a_url(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["judge"] = {"base_url": "localhost:8000/v1"}
    rejected(config, "config key evaluate.judge.base_url", "http")
    config["evaluate"]["judge"] = {"base_url": "http://localhost:8000/v1"}
    validate_config(config)


@pytest.mark.parametrize("url", ["http://localhost:99999/v1", "https://judge.example:8000x/v1", "http://[::1]:0/v1"])
def test_judge_base_url_with_an_invalid_port_is_refused(demo_config, url):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["judge"] = {"base_url": url}
    rejected(config, f"config key evaluate.judge.base_url: {url!r} has an invalid port", "from 1 to 65535")
    config["evaluate"]["judge"] = {"base_url": "http://localhost:65535/v1"}
    validate_config(config)


def test_judge_base_url_with_credentials_is_refused_without_showing_them(demo_config):
    config = copy.deepcopy(demo_config)
    config["evaluate"]["judge"] = {"base_url": "https://bob:s3cr3t-pw@judge.example/v1"}
    message = rejected(config, "config key evaluate.judge.base_url: holds credentials", "api_key_env")
    assert "s3cr3t-pw" not in message


def test_vllm_tensor_parallel_on_a_machine_without_gpu_stops_before_the_engine():
    from spatialreasoner.errors import ConfigError
    from spatialreasoner.evaluate.backends.vllm import engine_kwargs

    with pytest.raises(ConfigError, match="tensor_parallel_size: 2 on a machine without a GPU"):
        engine_kwargs({"model": "m", "tensor_parallel_size": 2}, on_cpu=True)
    assert engine_kwargs({"model": "m", "tensor_parallel_size": 2}, on_cpu=False)["tensor_parallel_size"] == 2


# --- local_rules: the workflow's rules, for validate-config as for the Snakefile --------------------------------------


@pytest.fixture(scope="module")
def listed_rules(repo_root) -> list[str]:
    """The rules Snakemake reads from the workflow (``snakemake --list-rules``), sorted."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/demo.yaml"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(proc.stdout.split())


def test_an_unknown_local_rule_is_refused_alike_by_validate_config_and_the_snakefile(
    repo_root, tmp_path, demo_config, listed_rules
):
    config = copy.deepcopy(demo_config)
    config["local_rules"] = ["fetch", "no_such_rule"]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    refusal = (
        f"config key local_rules[1]: 'no_such_rule' is not a rule of the workflow; expected some of {listed_rules}"
    )
    runs = {
        "validate-config": [sys.executable, "-m", "spatialreasoner.cli", "validate-config", str(path)],
        "snakemake": [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path)],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, (name, out[-3000:])
        assert refusal in out and "Job stats" not in out, (name, out[-3000:])
    # Every rule Snakemake reads may be named; an empty list names none.
    validate_config({**copy.deepcopy(demo_config), "local_rules": listed_rules})
    validate_config({**copy.deepcopy(demo_config), "local_rules": []})


def test_the_rules_validate_config_knows_are_those_snakemake_reads(repo_root, listed_rules):
    from spatialreasoner.config import workflow_rule_names

    assert sorted(workflow_rule_names(repo_root)) == listed_rules
    assert sorted(workflow_rule_names()) == listed_rules  # this checkout's, found from the package
