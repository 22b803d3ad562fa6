"""ZeRO-3 settings a run cannot use stop the job before any work, naming the file (or the launcher's setting) and the
key: another ZeRO stage, checkpoints without consolidated weights, fp16, a launcher precision other than the run's,
and a DeepSpeed global batch (``train_batch_size``) that the processes do not divide or that is not the run's."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from spatialreasoner.errors import ConfigError
from spatialreasoner.train.launch import (
    check_run_accelerate_config,
    check_zero_settings,
    train_command,
    zero_settings_of_environment,
    zero_settings_of_file,
)

ZERO3_FILE = "workflow/accelerate/zero3.yaml"
PATHS = {"init": "i", "data": "d", "checkpoint_dir": "w", "out": "o", "log": "l"}
CPU_RUN = {"stage": "sft", "per_device_train_batch_size": 2, "num_processes": 2, "resources": {"gpus": 0},
           "accelerate_config": ZERO3_FILE}  # fmt: skip


def zero3_copy(repo_root: Path, dest: Path, **changes) -> Path:
    """The workflow's ZeRO-3 file with ``changes`` (``deepspeed_config.<key>`` as ``ds_<key>``)."""
    data = yaml.safe_load((repo_root / ZERO3_FILE).read_text())
    for key, value in changes.items():
        if key.startswith("ds_"):
            data["deepspeed_config"][key.removeprefix("ds_")] = value
        else:
            data[key] = value
    dest.write_text(yaml.safe_dump(data))
    return dest


def test_zero3_on_cpu_launches_deepspeeds_cpu_accelerator_in_the_runs_precision():
    argv = shlex.split(train_command("r", CPU_RUN, **PATHS))
    assert "DS_ACCELERATOR=cpu" in argv and "OMP_NUM_THREADS=1" in argv
    i = argv.index("launch")
    assert argv[i + 1 : i + 7] == ["--config_file", ZERO3_FILE, "--num_processes", "2", "--mixed_precision", "no"]
    # Without accelerate_config a CPU run stays plain DDP, without DeepSpeed.
    ddp = train_command("r", {k: v for k, v in CPU_RUN.items() if k != "accelerate_config"}, **PATHS)
    assert "workflow/accelerate/cpu.yaml" in ddp and "DS_ACCELERATOR" not in ddp and "--mixed_precision" not in ddp


def test_the_workflows_zero3_file_is_accepted(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    check_run_accelerate_config("r", CPU_RUN)
    settings = zero_settings_of_file(ZERO3_FILE)
    assert settings["zero_stage"] == 3 and settings["zero3_save_16bit_model"] is True


@pytest.mark.parametrize(
    ("change", "named", "expected"),
    [
        ({"ds_zero_stage": 2}, "deepspeed_config.zero_stage is 2", "expected zero_stage: 3"),
        ({"ds_zero3_save_16bit_model": False}, "deepspeed_config.zero3_save_16bit_model is False",
         "expected zero3_save_16bit_model: true"),
        ({"mixed_precision": "fp16"}, "mixed_precision is fp16", "expected bf16 or no"),
    ],
)  # fmt: skip
def test_a_zero3_file_the_run_cannot_use_is_refused_by_the_config_check(
    repo_root, tmp_path, monkeypatch, change, named, expected
):
    from spatialreasoner.config import load_schema, validate_config

    bad = zero3_copy(repo_root, tmp_path / "bad.yaml", **change)
    monkeypatch.chdir(repo_root)
    config = yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())
    run = next(n for n, r in config["runs"].items() if r["stage"] == "sft")
    config["runs"][run]["accelerate_config"] = str(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(config, load_schema(repo_root / "workflow/schemas/config.schema.yaml"))
    message = str(err.value)
    assert f"config key runs.{run}.accelerate_config ({bad})" in message and named in message, message
    assert expected in message


def test_a_missing_accelerate_config_names_the_key():
    with pytest.raises(ConfigError, match=r"runs\.r\.accelerate_config: nowhere/zero3\.yaml is not a file"):
        check_run_accelerate_config("r", {**CPU_RUN, "accelerate_config": "nowhere/zero3.yaml"})


def test_a_launcher_precision_other_than_the_runs_stops_the_job():
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true", "ACCELERATE_MIXED_PRECISION": "bf16"}  # fmt: skip
    settings = zero_settings_of_environment(env)
    assert settings == {"zero_stage": 3, "zero3_save_16bit_model": True, "mixed_precision": "bf16",
                        "deepspeed_config_file": None}  # fmt: skip
    fp32 = {**CPU_RUN, "precision": "fp32"}
    with pytest.raises(ConfigError, match=r"launcher: mixed_precision is 'bf16' but runs.<run>.precision 'fp32'"):
        check_zero_settings("launcher", settings, fp32, 2, launched=True)
    check_zero_settings("launcher", {**settings, "mixed_precision": "no"}, fp32, 2, launched=True)
    assert zero_settings_of_environment({"ACCELERATE_MIXED_PRECISION": "no"}) is None  # not a DeepSpeed launch


@pytest.mark.parametrize(
    ("global_batch", "message"),
    [
        (5, "train_batch_size 5 cannot be split over 2 processes (num_processes does not divide the global batch)"),
        (8, "train_batch_size 8 is not per_device_train_batch_size x processes x gradient_accumulation_steps = "
            "2 x 2 x 1 = 4"),
    ],
)  # fmt: skip
def test_a_deepspeed_global_batch_the_processes_cannot_split_is_refused(repo_root, tmp_path, global_batch, message):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": global_batch, "zero_optimization": {"stage": 3}}))
    settings = {**zero_settings_of_file(repo_root / ZERO3_FILE), "deepspeed_config_file": str(ds)}
    with pytest.raises(ConfigError) as err:
        check_zero_settings("f", settings, CPU_RUN)
    assert str(err.value).startswith(f"{ds}: ") and message in str(err.value), str(err.value)
    ds.write_text(json.dumps({"train_batch_size": 4, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match="zero_optimization.stage is 2; expected 3"):
        check_zero_settings("f", settings, CPU_RUN)
    ds.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": 3}}))
    check_zero_settings("f", settings, CPU_RUN)


def test_gpu_check_refuses_a_zero3_file_it_cannot_run(repo_root, tmp_path):
    from spatialreasoner.gpucheck.main import check_zero3_file

    check_zero3_file(repo_root / ZERO3_FILE, tiny=True)
    bad = zero3_copy(repo_root, tmp_path / "stage2.yaml", ds_zero_stage=2)
    with pytest.raises(ConfigError, match=rf"--accelerate-config {bad}: deepspeed_config.zero_stage is 2"):
        check_zero3_file(bad, tiny=True)
    with pytest.raises(ConfigError, match=r"distributed_type is not DEEPSPEED"):
        check_zero3_file(repo_root / "workflow/accelerate/cpu.yaml", tiny=True)
