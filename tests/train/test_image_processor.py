"""The training's image processor: ``runs.<run>.use_fast`` false loads the PIL ("slow") one, as the official training
did (``AutoProcessor.from_pretrained`` without ``use_fast`` under transformers 4.49), true the torchvision one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatialreasoner.modeling import load_processor

from .conftest import FAST_SFT

LIMITS = (28 * 28 * 4, 28 * 28 * 16)


def test_use_fast_chooses_the_image_processor_at_the_same_pixel_limits(tiny_model_dir):
    slow = load_processor(tiny_model_dir, *LIMITS, use_fast=False)
    fast = load_processor(tiny_model_dir, *LIMITS, use_fast=True)
    assert type(slow.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert type(fast.image_processor).__name__ == "Qwen2VLImageProcessor"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8))
    a = slow.image_processor(images=[image], return_tensors="pt")
    b = fast.image_processor(images=[image], return_tensors="pt")
    assert a["image_grid_thw"].tolist() == b["image_grid_thw"].tolist()  # the same image tokens
    assert not np.allclose(a["pixel_values"].numpy(), b["pixel_values"].numpy())  # resized by other code


class Built(Exception):
    """Raised in place of building the trainer: the processor it would get is all the test needs."""


def test_training_hands_the_runs_image_processor_to_the_trainer(tiny_model_dir, train_tables, tmp_path, monkeypatch):
    from spatialreasoner.train import main, sft

    seen = []

    def spy(cfg, kwargs, init, data, processor, callbacks):
        seen.append(type(processor.image_processor).__name__)
        raise Built

    monkeypatch.setattr(sft, "build_trainer", spy)
    for use_fast in (False, True):
        cfg = {**FAST_SFT, "stop_steps": 1, "max_length": None, "use_fast": use_fast}
        with pytest.raises(Built):
            main.train("p", cfg, tiny_model_dir, train_tables["sft"], tmp_path / f"w{use_fast}", tmp_path / "m", seed=0)
    assert seen == ["Qwen2VLImageProcessorPil", "Qwen2VLImageProcessor"]
