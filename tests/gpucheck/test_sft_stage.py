"""The gpu-check SFT stage on the tiny model in this process, quick enough for every commit: its data reaches the
recipe's length, and its figures (tokens per sample, throughput, FLOPs) follow from the batches it trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from spatialreasoner.gpucheck import data, sft
from spatialreasoner.gpucheck.architectures import training_flops
from spatialreasoner.gpucheck.common import model_config

MAX_LENGTH = 160
RECIPE = {
    "learning_rate": 1.0e-5,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": MAX_LENGTH,
    "warmup_ratio": 0.0,
}


@pytest.fixture(scope="module")
def stage(tiny_model_dir, tmp_path_factory):
    spec = {
        "cap": 300, "workdir": str(tmp_path_factory.mktemp("gpucheck-sft")), "model_dir": str(tiny_model_dir),
        "model": "tiny", "attn": "sdpa", "steps": 3, "warmup_steps": 1, "recipe": RECIPE,
        "min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 25, "image_side": 112, "peak_tflops": 1.0,
    }  # fmt: skip
    return spec, sft.run_sft(spec)


def test_sft_data_reaches_the_recipes_length(tiny_model_dir, tmp_path):
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.prompts import format_question, present_options

    processor = load_processor(tiny_model_dir, 28 * 28 * 4, 28 * 28 * 25)
    built = data.sft_table(tmp_path, processor, rows=3, image_side=112, target_tokens=MAX_LENGTH)
    import pandas as pd

    table = pd.read_parquet(built["table"])
    assert len(table) == 3 and built["image_tokens"] == (112 // 28) ** 2
    for row in table.to_dict("records"):
        question = format_question(row["question"], present_options(row))
        n = data._conversation_tokens(processor, question, row["answer_cot"], built["image_tokens"])
        assert MAX_LENGTH - 8 < n <= MAX_LENGTH, n  # full length, never truncated
        assert row["answer_cot"].endswith("<answer>A</answer>")


def test_images_are_seeded(tmp_path):
    a = data.make_images(tmp_path / "a", 2, 56, seed=3)
    b = data.make_images(tmp_path / "b", 2, 56, seed=3)
    c = data.make_images(tmp_path / "c", 2, 56, seed=4)
    read = [[Path(p).read_bytes() for p in paths] for paths in (a, b, c)]
    assert read[0] == read[1] and read[0] != read[2]


def test_stage_trains_its_steps_at_the_recipes_batch(stage):
    spec, result = stage
    assert result["steps"] == spec["steps"] == len(result["step_times"])
    assert result["batch"] == 2 and result["max_length"] == MAX_LENGTH
    assert result["loss_finite"] and len(result["losses"]) == spec["steps"]
    assert result["gradient_checkpointing"] is True and result["processes"] == 1
    assert result["deepspeed_zero_stage"] is None


def test_stage_figures_follow_from_its_batches(stage, tiny_model_dir):
    spec, result = stage
    # every sample is one full-length conversation (2 rows, each MAX_LENGTH tokens or just under)
    assert MAX_LENGTH - 8 < result["tokens_per_sample"] <= MAX_LENGTH
    kept = result["step_times"][spec["warmup_steps"] :]
    assert result["measured_steps"] == len(kept)
    assert result["samples_per_second"] == pytest.approx(2 * len(kept) / sum(kept), rel=0.02)
    per_step = 2 * training_flops(model_config(tiny_model_dir), result["tokens_per_sample"], 4 * result["image_tokens"])
    assert result["model_tflops_per_step"] == pytest.approx(per_step / 1e12, rel=0.05, abs=1e-4)
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / spec["peak_tflops"], rel=0.01, abs=1e-4)


def test_batch_counter_counts_tokens_and_patches():
    import torch

    class Collator:
        def torch_call(self, examples):
            return {
                "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
                "image_grid_thw": torch.tensor([[1, 4, 4], [1, 2, 4]]),
            }

    collator = Collator()
    counter = sft.BatchCounter(collator)
    collator.torch_call([{}, {}])
    collator.torch_call([{}, {}])
    assert counter.per_batch() == (2, 7, 24)
    assert counter.tokens == [[3, 4], [3, 4]] and counter.patches == [[16, 8], [16, 8]]
