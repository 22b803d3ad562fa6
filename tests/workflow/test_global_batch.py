"""A run's global batch is part of its recipe: stated by validate-config and the dry run, kept through gradient
accumulation when the GPUs change, or refused naming both numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from spatialreasoner.config import global_batch_lines, load_config
from spatialreasoner.errors import ConfigError


def overlay(tmp_path, runs: dict):
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({"runs": runs}))
    return path


def test_the_paper_recipes_state_their_global_batch(repo_root):
    config = load_config(repo_root / "config/config.yaml")
    lines = {line.split(":")[0]: line for line in global_batch_lines(config)}
    sft = config["runs"]["SpatialReasoner-SFT"]
    assert f"global batch {sft['global_batch_size']} samples" in lines["run SpatialReasoner-SFT"]
    assert "6 per device x 4 training process(es) x 1 accumulation" in lines["run SpatialReasoner-SFT"]
    # GRPO: 3 training GPUs next to the vLLM server's
    assert "global batch 36 completions (9 prompts x 4 generations)" in lines["run SpatialReasoner-Zero"]


def test_fewer_gpus_keep_the_global_batch_through_accumulation(repo_root, tmp_path):
    gpus = overlay(
        tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 2}}, "SpatialReasoner": {"resources": {"gpus": 2}}}
    )
    config = load_config(repo_root / "config/config.yaml", gpus)
    assert config["runs"]["SpatialReasoner-SFT"]["gradient_accumulation_steps"] == 24 // (6 * 2)
    assert config["runs"]["SpatialReasoner"]["gradient_accumulation_steps"] == 36 // (12 * 1)
    lines = global_batch_lines(config)
    assert any(line.startswith("run SpatialReasoner-SFT: global batch 24 samples") for line in lines), lines


def test_eight_gpus_that_cannot_keep_it_are_refused_naming_both_numbers(repo_root, tmp_path):
    gpus = overlay(tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 8}}})
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / "config/config.yaml", gpus)
    message = str(info.value)
    assert "runs.SpatialReasoner-SFT.global_batch_size" in message
    assert "global batch of 24 samples" in message and "makes 48 per accumulation step" in message, message


def test_a_run_stating_its_own_global_batch_is_accepted(repo_root, tmp_path):
    gpus = overlay(tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 8}, "global_batch_size": 48}})
    config = load_config(repo_root / "config/config.yaml", gpus)
    assert config["runs"]["SpatialReasoner-SFT"]["gradient_accumulation_steps"] == 1
    gpus = overlay(tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 8}, "global_batch_size": None}})
    config = load_config(repo_root / "config/config.yaml", gpus)
    assert "global batch 48 samples" in global_batch_lines(config)[0]


def test_a_conflicting_accumulation_is_refused(repo_root, tmp_path):
    gpus = overlay(tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 2}, "gradient_accumulation_steps": 3}})
    with pytest.raises(ConfigError, match=r"needs gradient_accumulation_steps 2 .* is 3"):
        load_config(repo_root / "config/config.yaml", gpus)


def test_the_dry_run_states_the_global_batch_of_an_eight_gpu_run(repo_root, tmp_path):
    """8 GPUs with half the per-device batch keep the paper's 24; the dry run says so and the job gets it."""
    gpus = overlay(tmp_path, {"SpatialReasoner-SFT": {"resources": {"gpus": 8}, "per_device_train_batch_size": 3}})
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "2", "results/models/SpatialReasoner-SFT",
         "--configfile", "config/config.yaml", str(gpus)],
        cwd=repo_root, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert (
        "run SpatialReasoner-SFT: global batch 24 samples per optimizer step = 3 per device x 8 training process(es)"
        " x 1 accumulation step(s)" in text
    ), text[-3000:]
    assert '\\"gradient_accumulation_steps\\": 1' in text or '"gradient_accumulation_steps": 1' in text
