"""Seeded inputs of the paper's shapes for the gpu-check stages: images, SFT and RL tables, inference prompts.

Images are drawn at a given side (448 px = 200,704 pixels, the paper's upper limit, gives 256 image tokens); SFT
answers are lengthened until each conversation reaches the recipe's ``max_length`` in tokens, so every step trains
on full-length sequences (the worst case for memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = ("cube", "sphere", "cone", "cylinder", "car", "chair", "person", "table")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "gray")
FILLER = (
    "The 3D location of the {c} {s} is (1.2, -0.4, 5.6). The distance from the {c} {s} to the camera is 5.74. "
    "The front direction of the {c} {s} is (0.0, 0.0, -1.0). "
)


def make_images(out_dir: Path, count: int, side: int, seed: int = 0) -> list[str]:
    """``count`` seeded PNG images of ``side`` x ``side`` pixels: coloured boxes on a gradient."""
    from PIL import Image, ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    ramp = np.linspace(40, 200, side, dtype=np.uint8)
    for i in range(count):
        base = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), np.full((side, side), 90)], -1)
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.integers(0, side * 3 // 4, size=2)
            w, h = rng.integers(side // 8, side // 3, size=2)
            draw.rectangle(
                [int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
        path = out_dir / f"img{i:04d}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def question_row(i: int) -> dict:
    """A 3D spatial multiple-choice question (text only), in the canonical table's columns."""
    c1, c2 = COLORS[i % len(COLORS)], COLORS[(i + 3) % len(COLORS)]
    s1, s2 = SHAPES[i % len(SHAPES)], SHAPES[(i + 5) % len(SHAPES)]
    return {
        "kind": "qa",
        "question": f"Is the {c1} {s1} closer to the camera than the {c2} {s2}?",
        "A": "yes",
        "B": "no",
        "C": None,
        "D": None,
        "answer": "AB"[i % 2],
        "category": "location_closer_to_camera",
        "source_row": i,
    }


def image_tokens(processor, image_path: str) -> int:
    """Tokens the processor gives an image (patches merged 2 x 2)."""
    from PIL import Image

    with Image.open(image_path) as im:
        out = processor.image_processor(images=[im.convert("RGB")], return_tensors="np")
    merge = getattr(processor.image_processor, "merge_size", 2)
    return int(np.prod(out["image_grid_thw"][0])) // merge**2


def _conversation_tokens(processor, question: str, answer: str, n_image: int) -> int:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    # The template holds one <|image_pad|>; the processor expands it into the image's tokens.
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) - 1 + n_image


def sft_answer(processor, question: str, n_image: int, target_tokens: int, seed: int) -> str:
    """A chain-of-thought answer that makes the conversation ``target_tokens`` long (or just under)."""
    c, s = COLORS[seed % len(COLORS)], SHAPES[seed % len(SHAPES)]
    unit = FILLER.format(c=c, s=s).split(" ")
    words = (unit * (target_tokens // 4 + 8))[: target_tokens + 8]
    lo, hi = 0, len(words)
    while lo < hi:  # the most words whose conversation fits in target_tokens
        mid = (lo + hi + 1) // 2
        answer = " ".join(words[:mid]) + " <answer>A</answer>"
        if _conversation_tokens(processor, question, answer, n_image) <= target_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]) + " <answer>A</answer>"


def sft_table(out: Path, processor, rows: int, image_side: int, target_tokens: int) -> dict:
    """The canonical SFT table (3D QA rows with long answers) the project's SFT trainer reads."""
    import pandas as pd

    from spatialreasoner.prompts import format_question, present_options

    images = make_images(out / "images", rows, image_side)
    n_image = image_tokens(processor, images[0])
    records = []
    for i, path in enumerate(images):
        row = question_row(i)
        question = format_question(row["question"], present_options(row))
        records.append({**row, "image": path, "answer_cot": sft_answer(processor, question, n_image, target_tokens, i)})
    table = out / "sft.parquet"
    pd.DataFrame(records).to_parquet(table, index=False)
    return {"table": str(table), "image_tokens": n_image, "image_patches": n_image * 4}


def rl_table(out: Path, rows: int, image_side: int) -> str:
    """The canonical RL table (question, options, answer, category, image) the project's GRPO trainer reads."""
    import pandas as pd

    images = make_images(out / "images", rows, image_side, seed=1)
    table = out / "rl.parquet"
    pd.DataFrame([{**question_row(i), "image": p} for i, p in enumerate(images)]).to_parquet(table, index=False)
    return str(table)


def inference_rows(out: Path, rows: int, image_side: int) -> list[dict]:
    """Benchmark-like rows (index, question, options) with an image path each."""
    images = make_images(out / "images", rows, image_side, seed=2)
    return [{"index": i, **question_row(i), "image_path": p} for i, p in enumerate(images)]
