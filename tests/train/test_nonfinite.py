"""A run whose loss or gradient norm stops being finite ends with an error naming the step and writes no final model;
a run config whose numbers are not finite stops before anything is touched."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from transformers import TrainerCallback

from spatialreasoner.errors import ConfigError, DataError, SpatialReasonerError
from spatialreasoner.train.main import train

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
    # The checkpoints before the divergence stay; none is written from the diverged weights.
    saved = sorted(p.name for p in (tmp_path / "work").glob("checkpoint-*"))
    assert saved == ["checkpoint-1"]


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
