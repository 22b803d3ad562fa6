"""Small hand-built canonical tables (SFT and RL) with real image files, and a briefly SFT-trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

COLORS = ["red", "blue", "green", "yellow"]
SUBTYPES = ["location_closer_to_camera", "height_higher", "location_above", "multi_object_parallel"]


def write_images(folder: Path, n: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = Image.new("RGB", (56, 56), COLORS[i % len(COLORS)])
        img.paste((255, 255, 255), (8 * (i % 4), 8, 8 * (i % 4) + 16, 24))
        name = f"img{i}.png"
        img.save(folder / name)
        names.append(f"images/{name}")
    return names


def qa_row(i: int, image: str) -> dict:
    a, b = COLORS[i % 4], COLORS[(i + 1) % 4]
    answer = "A" if i % 2 == 0 else "B"
    cot = (
        f"<think>The 3D location of the {a} cube is (1.0, 0.5, {2 + i % 3}.0). "
        f"The 3D location of the {b} cube is (0.5, 0.5, {4 + i % 2}.0).</think><answer>{answer}</answer>"
    )
    return {
        "kind": "qa",
        "source_row": i,
        # Questions of different lengths: batches of prompts then need padding (its side matters for GRPO).
        "question": f"Which cube is closer to the camera, the {a} one or the {b} one?"
        + " Look closely." * (4 * (i % 3)),
        "A": f"the {a} cube",
        "B": f"the {b} cube",
        "C": None,
        "D": None,
        "answer": answer,
        "answer_cot": cot,
        "category": SUBTYPES[i % len(SUBTYPES)],
        "image": image,
        "conversations": None,
    }


def llava_row(i: int, image: str) -> dict:
    return {
        "kind": "conversation",
        "source_row": 100 + i,
        "question": None,
        "A": None,
        "B": None,
        "C": None,
        "D": None,
        "answer": None,
        "answer_cot": None,
        "category": None,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour dominates the picture?"},
            {"from": "gpt", "value": f"It is mostly {COLORS[i % 4]}."},
        ],
    }


@pytest.fixture(scope="session")
def train_tables(tmp_path_factory) -> dict[str, Path]:
    """``sft``: 8 QA rows + 2 LLaVA rows; ``rl``: 8 QA rows; images relative to the tables' folder."""
    root = tmp_path_factory.mktemp("tables")
    images = write_images(root / "images", 8)
    sft = [qa_row(i, images[i]) for i in range(8)] + [llava_row(i, images[i]) for i in range(2)]
    pd.DataFrame(sft).to_parquet(root / "sft.parquet")
    rl = [{k: v for k, v in qa_row(i, images[i]).items() if k not in ("answer_cot", "conversations")} for i in range(8)]
    for i, row in enumerate(rl):
        row["question_index"] = i
    pd.DataFrame(rl).to_parquet(root / "rl.parquet")
    return {"sft": root / "sft.parquet", "rl": root / "rl.parquet"}


#: Settings that make the tiny model learn the answer format within a few dozen CPU steps.
FAST_SFT = {
    "stage": "sft",
    "num_train_epochs": 30,
    "learning_rate": 5.0e-3,
    "warmup_ratio": 0.1,
    "per_device_train_batch_size": 4,
    "save_steps": 1000,
    "gradient_checkpointing": False,
    "report_to": [],
}


@pytest.fixture(scope="session")
def sft_trained_dir(tiny_model_dir, train_tables, tmp_path_factory) -> Path:
    """The tiny model after a brief SFT (so GRPO has non-zero rewards and advantages)."""
    import torch

    from spatialreasoner.train.main import train

    root = tmp_path_factory.mktemp("sft-trained")
    cfg = {**FAST_SFT, "stop_steps": 60}
    # Trained at torch's default of one thread per core (the suite runs one): the tests that start from this model
    # (GRPO rewards, vLLM's agreement with the trained weights) were established on the model two threads make.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return train("sft-fixture", cfg, tiny_model_dir, train_tables["sft"], root / "work", root / "model", seed=0)
    finally:
        torch.set_num_threads(before)


def read_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())
