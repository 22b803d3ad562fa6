"""Decisions every rank must share are made once, by rank 0, and broadcast: a two-process job whose run config
changed sets the stale working folder aside once and every rank starts afresh, however slowly a rank looks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from spatialreasoner.train.launch import train_command
from spatialreasoner.train.main import train

from .conftest import FAST_SFT, read_state
from .test_multiproc import job_env

pytestmark = pytest.mark.slow  # two processes' imports and start-up: about a minute on two busy cores

#: Rank 1 leaves the first barrier a few seconds after rank 0 (a rank on a slower or busier node).
SLOW_RANK_ONE = """\
import sys, time
from accelerate import PartialState

_wait, _slowed = PartialState.wait_for_everyone, []


def wait_for_everyone(self):
    _wait(self)
    if self.process_index == 1 and not _slowed:
        _slowed.append(True)
        time.sleep(3)


PartialState.wait_for_everyone = wait_for_everyone
from spatialreasoner.cli import main

sys.exit(main())
"""


def test_two_ranks_agree_to_set_aside_a_stale_working_folder(tiny_model_dir, train_tables, tmp_path, repo_root):
    cfg = {**FAST_SFT, "per_device_train_batch_size": 2, "stop_steps": 1, "save_steps": 1, "resources": {"gpus": 0}}
    work = tmp_path / "work"
    train("r", cfg, tiny_model_dir, train_tables["sft"], work, tmp_path / "first", seed=0)
    assert (work / "checkpoint-1").is_dir()

    changed = {**cfg, "learning_rate": cfg["learning_rate"] / 2, "num_processes": 2, "per_device_train_batch_size": 1}
    log = tmp_path / "train.log"
    cmd = train_command("r", changed, init=str(tiny_model_dir), data=str(train_tables["sft"]), checkpoint_dir=str(work),
                        out=str(tmp_path / "model"), log=str(log), seed=0)  # fmt: skip
    assert "-m spatialreasoner.cli" in cmd
    script = tmp_path / "slow_rank_one.py"
    script.write_text(SLOW_RANK_ONE)
    proc = subprocess.run(["bash", "-c", cmd.replace("-m spatialreasoner.cli", str(script))], cwd=repo_root,
                          env=job_env(), capture_output=True, text=True, timeout=400)  # fmt: skip
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, (proc.stderr[-3000:], text[-3000:])
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("work.stale-")]
    assert len(stale) == 1 and (stale[0] / "checkpoint-1").is_dir()
    assert text.count("the run config changed since") == 1
    assert "resuming from" not in text
    state = read_state(tmp_path / "model")
    assert state["global_step"] == 1 and [h["step"] for h in state["log_history"] if "loss" in h] == [1]
    assert json.loads((tmp_path / "model" / "run.json").read_text())["num_processes"] == 2
    assert json.loads((work / "run_config.json").read_text())["learning_rate"] == changed["learning_rate"]
    assert Path(work / "checkpoint-1").is_dir() and {"rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in (work / "checkpoint-1").iterdir()
    }
