"""A run killed after a checkpoint resumes from it; SIGTERM / SLURM's warning signal save a checkpoint first."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from spatialreasoner.train.main import last_checkpoint, train

from .conftest import FAST_SFT, read_state

STOP = 150


class RecordStart(TrainerCallback):
    """Remembers the global step at which trainer.train() begins (the resumed step)."""

    start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


def launch(tiny_model_dir, table, tmp_path: Path, cfg: dict) -> tuple[subprocess.Popen, Path]:
    """Start ``spatialreasoner train`` as its own process, as the workflow rule does on CPU."""
    log = tmp_path / "train.log"
    cmd = [
        sys.executable, "-m", "spatialreasoner.cli", "train",
        "--run-name", "killed", "--run-config", json.dumps(cfg),
        "--init", str(tiny_model_dir), "--data", str(table),
        "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--seed", "0",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with code {proc.returncode}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def resume_and_finish(tiny_model_dir, table, tmp_path: Path, cfg: dict) -> int:
    recorder = RecordStart()
    out = train(
        "killed", cfg, tiny_model_dir, table, tmp_path / "work", tmp_path / "model", seed=0, extra_callbacks=[recorder]
    )
    assert read_state(out)["global_step"] == STOP
    return recorder.start_step


@pytest.mark.slow
def test_killed_after_first_checkpoint_resumes_from_it(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": STOP, "save_steps": 5, "save_total_limit": 2}
    proc, log = launch(tiny_model_dir, train_tables["sft"], tmp_path, cfg)
    wait_for(lambda: (tmp_path / "work" / "checkpoint-5" / "trainer_state.json").is_file(), proc)
    time.sleep(0.2)  # let it get past the checkpoint, then kill it without warning
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model").exists()
    checkpoint = last_checkpoint(tmp_path / "work")
    saved_step = read_state(checkpoint)["global_step"]
    assert 5 <= saved_step < STOP

    assert resume_and_finish(tiny_model_dir, train_tables["sft"], tmp_path, cfg) == saved_step
    assert (tmp_path / "work" / f"checkpoint-{STOP}").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_then_the_rerun_resumes(tiny_model_dir, train_tables, tmp_path, sig):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": STOP, "save_steps": 1000}
    proc, log = launch(tiny_model_dir, train_tables["sft"], tmp_path, cfg)
    wait_for(lambda: "'loss'" in log.read_text(), proc)  # training has started
    proc.send_signal(sig)
    proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 2, text[-2000:]
    assert f"received {signal.Signals(sig).name}" in text and "rerun to resume" in text
    checkpoint = last_checkpoint(tmp_path / "work")
    assert checkpoint is not None, "no checkpoint saved on the signal"
    saved_step = read_state(checkpoint)["global_step"]
    assert 0 < saved_step < STOP
    assert not (tmp_path / "model").exists()

    assert resume_and_finish(tiny_model_dir, train_tables["sft"], tmp_path, cfg) == saved_step


def test_rerun_after_finishing_only_writes_the_final_model(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "stop_steps": 3}
    first = train("again", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0)
    weights = (first / "model.safetensors").read_bytes()
    import shutil

    shutil.rmtree(first)  # as Snakemake does with a declared output before rerunning a job
    recorder = RecordStart()
    again = train(
        "again", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0,
        extra_callbacks=[recorder],
    )  # fmt: skip
    assert recorder.start_step is None  # no training at all: checkpoint-3 already reached stop_steps
    assert (again / "model.safetensors").read_bytes() == weights


def test_a_changed_run_config_sets_old_checkpoints_aside(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "stop_steps": 3}
    work, out = tmp_path / "work", tmp_path / "model"
    train("changed", cfg, tiny_model_dir, train_tables["sft"], work, out, seed=0)
    import shutil

    shutil.rmtree(out)
    recorder = RecordStart()
    changed = {**cfg, "learning_rate": cfg["learning_rate"] / 2}
    train("changed", changed, tiny_model_dir, train_tables["sft"], work, out, seed=0, extra_callbacks=[recorder])
    assert recorder.start_step == 0  # trained afresh, not resumed from checkpoint-3 of the other config
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("work.stale-")]
    assert len(stale) == 1 and (stale[0] / "checkpoint-3").is_dir()
    assert json.loads((work / "run_config.json").read_text())["learning_rate"] == changed["learning_rate"]
    assert read_state(out)["global_step"] == 3


def test_a_changed_save_or_log_setting_keeps_the_checkpoints(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": 4, "save_steps": 2}
    work, out = tmp_path / "work", tmp_path / "model"
    train("kept", {**cfg, "stop_steps": 2}, tiny_model_dir, train_tables["sft"], work, out, seed=0)
    import shutil

    shutil.rmtree(out)
    recorder = RecordStart()
    # stop_steps, save_steps and logging_steps differ; the training trajectory does not.
    changed = {**cfg, "save_steps": 1, "logging_steps": 2}
    train("kept", changed, tiny_model_dir, train_tables["sft"], work, out, seed=0, extra_callbacks=[recorder])
    assert recorder.start_step == 2
    assert not [p for p in tmp_path.iterdir() if ".stale-" in p.name]
