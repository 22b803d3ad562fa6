"""A run whose loss or gradient norm stops being finite ends with an error naming the step and writes no final model,
and sets aside the checkpoints whose weights diverged; a run config whose numbers are not finite stops before
anything is touched."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
from transformers import TrainerCallback

from spatialreasoner.errors import ConfigError, DataError, SpatialReasonerError
from spatialreasoner.train.common import non_finite_weight
from spatialreasoner.train.main import last_checkpoint, train

from .conftest import FAST_SFT


class PoisonWeightsAfter(TrainerCallback):
    """Fills one weight with NaN at the end of ``step``, as a diverging update would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            import torch

            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_training_naming_the_step_and_writes_no_final_model(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "stop_steps": 3, "save_steps": 1, "per_device_train_batch_size": 2}
    with pytest.raises(SpatialReasonerError) as err:
        train("nan", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0,
              extra_callbacks=[PoisonWeightsAfter(1)])  # fmt: skip
    message = str(err.value)
    assert "run nan" in message and "at step 2" in message and "nan" in message.split("at step 2")[0]
    assert not (tmp_path / "model").exists()
    # checkpoint-1 was saved after the poisoned update (its step's loss, logged before, was finite): set aside.
    names = sorted(p.name for p in (tmp_path / "work").iterdir() if "checkpoint-" in p.name)
    assert names == ["nonfinite-checkpoint-1"]
    assert non_finite_weight(tmp_path / "work" / "nonfinite-checkpoint-1") is not None
    assert last_checkpoint(tmp_path / "work") is None
    assert "checkpoint-1 held non-finite weights" in message and "No usable checkpoint is left" in message


def test_divergence_sets_aside_the_checkpoints_with_non_finite_weights_and_keeps_the_others(
    tiny_model_dir, train_tables, tmp_path
):
    # Logged at steps 1, 2 and 4 (the loss of steps 3-4); saved at every step; the update of step 3 diverges.
    cfg = {**FAST_SFT, "stop_steps": 5, "save_steps": 1, "logging_steps": 2, "per_device_train_batch_size": 2}
    work = tmp_path / "work"
    with pytest.raises(SpatialReasonerError) as err:
        train("nan", cfg, tiny_model_dir, train_tables["sft"], work, tmp_path / "model", seed=0,
              extra_callbacks=[PoisonWeightsAfter(3)])  # fmt: skip
    message = str(err.value)
    assert "at step 4 (logged over steps 3-4)" in message
    assert not (tmp_path / "model").exists()
    names = sorted(p.name for p in work.iterdir() if "checkpoint-" in p.name)
    assert names == ["checkpoint-1", "checkpoint-2", "nonfinite-checkpoint-3"]
    # checkpoint-2, saved after the last finite log (step 2), was checked and kept; checkpoint-3 was set aside.
    assert non_finite_weight(work / "checkpoint-1") is None and non_finite_weight(work / "checkpoint-2") is None
    assert non_finite_weight(work / "nonfinite-checkpoint-3") is not None
    assert last_checkpoint(work) == work / "checkpoint-2"  # where a rerun resumes
    assert "checkpoint-3 held non-finite weights" in message and "moved to nonfinite-checkpoint-3" in message
    assert f"Usable checkpoints (finite weights) in {work}: checkpoint-1, checkpoint-2." in message


@pytest.mark.parametrize("key", ["learning_rate", "num_train_epochs"])
def test_non_finite_run_number_stops_before_the_working_folder_is_touched(tiny_model_dir, train_tables, tmp_path, key):
    work = tmp_path / "work"
    (work / "checkpoint-1").mkdir(parents=True)
    (work / "run_config.json").write_text(json.dumps({"learning_rate": 1.0}))
    with pytest.raises(ConfigError, match=rf"config key runs\.bad\.{key}: nan is not a finite number"):
        train("bad", {**FAST_SFT, key: math.nan}, tiny_model_dir, train_tables["sft"], work, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-1", "run_config.json"]


def test_final_model_is_refused_from_a_checkpoint_with_non_finite_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from spatialreasoner.train.common import export_final_model

    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(tiny_model_dir, checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    name = sorted(weights)[1]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("inf")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match=rf"{checkpoint}.*{name}.*not finite"):
        export_final_model(checkpoint, tmp_path / "model", {"run": "r"})
    assert not (tmp_path / "model").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


#: One rank of a two-process job reaching the diverged log: rank 0 checks the checkpoints slowly, rank 1 must wait
#: for its answer; each writes the error it raised and the working folder it then sees.
DIVERGED_RANK = """\
import json, math, sys, time
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist

import spatialreasoner.train.common as common
from spatialreasoner.train.callbacks import FiniteMetricsCallback, TrainingDiverged

rank, work, rendezvous, out = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
if rank == 0:
    check = common.non_finite_weight
    common.non_finite_weight = lambda folder: (time.sleep(2), check(folder))[1]
callback = FiniteMetricsCallback("r")
callback.last_finite_step = 2
state = SimpleNamespace(global_step=3, is_world_process_zero=rank == 0)
try:
    callback.on_log(SimpleNamespace(output_dir=str(work)), state, None, logs={"loss": math.nan})
except TrainingDiverged as exc:
    seen = sorted(p.name for p in work.iterdir())
    out.write_text(json.dumps({"message": str(exc), "seen": seen}))
dist.destroy_process_group()
"""


def test_two_ranks_set_aside_a_non_finite_checkpoint_once_and_stop_with_the_same_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    work = tmp_path / "work"
    for step, value in [(1, 1.0), (2, 1.0), (3, float("nan"))]:
        (work / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"w": torch.full((2, 2), value)}, work / f"checkpoint-{step}" / "model.safetensors")
    script = tmp_path / "rank.py"
    script.write_text(DIVERGED_RANK)
    args = [str(work), str(tmp_path / "rendezvous")]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), *args, str(tmp_path / f"rank{rank}.json")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:  # a rank left waiting for the other
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # Rank 1 raised only after rank 0 had moved checkpoint-3: both see the same folder and give the same error.
    expected = ["checkpoint-1", "checkpoint-2", "nonfinite-checkpoint-3"]
    assert ranks[0]["seen"] == ranks[1]["seen"] == expected
    assert ranks[0]["message"] == ranks[1]["message"]
    assert "moved to nonfinite-checkpoint-3" in ranks[0]["message"]
    assert f"Usable checkpoints (finite weights) in {work}: checkpoint-1, checkpoint-2." in ranks[0]["message"]
