"""The token budget: counts equal what the processor and the trainers' collators produce, and over-long rows stop
the job before training or inference starts, naming the rows and the numbers."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest

from spatialreasoner.budget import VisionGrid, check_inference_budget, check_training_budget, measure
from spatialreasoner.errors import DataError
from spatialreasoner.modeling import load_processor

from .conftest import FAST_SFT, qa_row

# Sizes that hit every branch of the resize rule at these limits: rounding, downscaling, upscaling, thin images.
SIZES = [(56, 56), (300, 120), (640, 480), (33, 900), (1000, 1000), (29, 29), (111, 57)]
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 25


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def sized_images(tmp_path_factory) -> dict[tuple[int, int], Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("sized")
    out = {}
    for w, h in SIZES:
        out[(w, h)] = root / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (w % 256, h % 256, 90)).save(out[(w, h)])
    return out


def test_image_tokens_follow_the_processor(processor, sized_images):
    from PIL import Image

    grid = VisionGrid.from_processor(processor)
    assert (grid.patch_size, grid.merge_size, grid.min_pixels, grid.max_pixels) == (14, 2, MIN_PIXELS, MAX_PIXELS)
    counts = []
    for (w, h), path in sized_images.items():
        out = processor.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
        counts.append(grid.tokens(w, h))
        assert counts[-1] == int(out["image_grid_thw"].prod()) // 4, (w, h)
    # The limits bind at both ends; a thin image keeps a 28-pixel short side and ends above max_pixels.
    assert min(counts) == 4 and 25 in counts and counts[SIZES.index((33, 900))] == 26


def test_sft_lengths_equal_the_collators_sequences(processor, train_tables):
    from spatialreasoner.train.sft import SpatialVisionCollator, build_sft_dataset

    table = train_tables["sft"]
    dataset = build_sft_dataset(table)
    rows = [f"row {i}" for i in range(len(dataset))]
    lengths = measure(
        processor, dataset["messages"], dataset["images"], rows, add_generation_prompt=False
    )  # fmt: skip
    collator = SpatialVisionCollator(processor=processor, max_length=None)
    batch = collator.torch_call([dict(ex) for ex in dataset])
    assert lengths.total == batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths.total)) > 3  # QA rows of several lengths and conversations, not one number
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert lengths.image == (batch["input_ids"] == image_pad).sum(dim=1).tolist()


def test_grpo_prompt_lengths_equal_the_processors_prompts(processor, train_tables, sized_images):
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    from spatialreasoner.train.grpo import grpo_prompt

    prompts = [grpo_prompt(qa_row(i, ""), "Think step by step.") for i in range(len(SIZES))]
    conversations = [prepare_multimodal_messages(p, images=[None]) for p in prompts]
    paths = [str(p) for p in sized_images.values()]
    lengths = measure(processor, conversations, [[p] for p in paths], list(paths), add_generation_prompt=True)
    for prompt, path, total in zip(prompts, paths, lengths.total, strict=True):
        messages = prepare_multimodal_messages(prompt, images=[Image.open(path).convert("RGB")])
        out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert total == len(out["input_ids"][0]), path


def test_over_long_rows_stop_with_their_numbers(processor, tiny_model_dir, train_tables):
    sft = {**FAST_SFT, "max_length": None}
    summary = check_training_budget(sft, train_tables["sft"], processor, tiny_model_dir)
    assert summary["rows"] == 10 and summary["min"] <= summary["median"] <= summary["max"]
    limit = int(summary["median"])
    with pytest.raises(DataError) as err:
        check_training_budget({**sft, "max_length": limit}, train_tables["sft"], processor, tiny_model_dir)
    message = str(err.value)
    assert f"exceed runs.<run>.max_length = {limit} tokens" in message
    assert f"sft.parquet row 2: {summary['max']} tokens" in message  # the longest row (3 x 4 "Look closely.")
    assert f"({VisionGrid.from_processor(processor).tokens(56, 56)} image + " in message  # the tables' 56 x 56 images

    grpo = {"stage": "grpo", "system_prompt": None, "instruction": None, "max_completion_length": 48}
    got = check_training_budget({**grpo, "max_prompt_length": None}, train_tables["rl"], processor, tiny_model_dir)
    with pytest.raises(DataError, match=r"row\(s\) exceed runs.<run>.max_prompt_length = 60 tokens"):
        check_training_budget({**grpo, "max_prompt_length": 60}, train_tables["rl"], processor, tiny_model_dir)
    # The tiny model's context is 4096 positions: a prompt plus its completion must fit.
    completion = 4096 - got["max"] + 1
    with pytest.raises(DataError, match=rf"exceed the model's context .* \+ {completion} to generate\)"):
        check_training_budget(
            {**grpo, "max_prompt_length": None, "max_completion_length": completion},
            train_tables["rl"], processor, tiny_model_dir,
        )  # fmt: skip


def test_training_stops_before_anything_is_written(tiny_model_dir, train_tables, tmp_path):
    from spatialreasoner.train.main import train

    cfg = {**FAST_SFT, "max_length": 40, "stop_steps": 2}
    with pytest.raises(DataError, match="exceed runs.<run>.max_length = 40 tokens"):
        train("long", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0)
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()  # nothing written yet


def test_inference_budget_counts_base64_images_and_leaves_bad_ones(processor, tiny_model_dir, sized_images):
    cells = [base64.b64encode(p.read_bytes()).decode() for p in sized_images.values()] + ["not an image"]
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
        for i in range(len(cells))
    ]
    rows = [f"index {i}" for i in range(len(cells))]
    summary = check_inference_budget(processor, tiny_model_dir, conversations, cells, rows, max_new_tokens=512)
    assert summary["rows"] == len(SIZES) and summary["image_tokens_max"] == 26
    with pytest.raises(DataError, match=r"exceed the model's context .*index 4: "):
        check_inference_budget(processor, tiny_model_dir, conversations, cells, rows, max_new_tokens=4096 - 30)


def test_unreadable_training_image_names_the_row(processor, tiny_model_dir, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    pd.DataFrame([{**qa_row(3, "bad.png")}]).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet row 3: image .*bad.png cannot be read for its size"):
        check_training_budget({**FAST_SFT, "max_length": None}, tmp_path / "t.parquet", processor, tiny_model_dir)


def test_without_max_length_the_longest_rows_and_their_memory_are_reported(processor, tiny_model_dir, train_tables,
                                                                           tmp_path):  # fmt: skip
    """max_length null (the official SFT truncates nothing): nothing is refused for its length alone, the longest
    rows and what a batch of the longest implies are reported, and only a row beyond the model's context stops."""
    import json

    sft = {**FAST_SFT, "max_length": None, "per_device_train_batch_size": 6}
    summary = check_training_budget(sft, train_tables["sft"], processor, tiny_model_dir)
    longest = summary["longest"]
    assert longest[0]["tokens"] == summary["max"] and longest[0]["row"].endswith("sft.parquet row 2")
    assert len(longest) == 5 and longest[-1]["tokens"] < summary["max"]
    assert [r["tokens"] for r in longest] == sorted((r["tokens"] for r in longest), reverse=True)
    assert all(r["tokens"] == r["image"] + r["text"] for r in longest)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    text = config.get("text_config") or config
    memory = summary["longest_batch_memory"]
    assert memory["tokens"] == 6 * summary["max"]
    assert memory["logits_gib"] == round(6 * summary["max"] * text["vocab_size"] * 4 / 2**30, 2)
    # a model whose context is one token shorter than the longest row: that row cannot fit, and only it is named
    short = tmp_path / "short-context"
    short.mkdir()
    if "text_config" in config:
        config["text_config"]["max_position_embeddings"] = summary["max"] - 1
    config["max_position_embeddings"] = summary["max"] - 1
    (short / "config.json").write_text(json.dumps(config))
    n_longest = sum(r["tokens"] == summary["max"] for r in longest)  # rows of the longest length only
    with pytest.raises(DataError, match=rf"{n_longest} of 10 row\(s\) exceed the model's context .*sft.parquet row 2"):
        check_training_budget(sft, train_tables["sft"], processor, short)
