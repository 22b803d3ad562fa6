"""A tiny hand-made benchmark TSV in VLMEvalKit's format (base64 PNG images) for the inference tests."""

import base64
import io

import pandas as pd
import pytest
from PIL import Image


def png_b64(size=(56, 56), color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def make_benchmark(path, n=6, bad=(), refs=(), max_repeat=None):
    """``n`` 3DSRBench-style rows with questions of different lengths (``max_repeat`` caps the growth); ``bad`` rows
    get an undecodable image, ``refs`` rows refer to row 0's image by index as VLMEvalKit does."""
    rows = []
    for i in range(n):
        image = png_b64((56 + 28 * (i % 2), 56), (40 * i % 255, 120, 200))
        if i in bad:
            image = base64.b64encode(b"not an image at all").decode() * 4
        if i in refs:
            image = "0"
        rows.append(
            {
                "index": 10 + i,
                "qid": f"q{i // 2}" + ("-1" if i % 2 else ""),
                "question": "Is the red cube higher than the blue ball?"
                + " Look closely." * (i % (max_repeat or n + 1)),
                "A": "yes",
                "B": "no",
                "C": None if i % 2 else "=1+1",
                "answer": "A",
                "category": "height_higher",
                "image": image,
            }
        )
    if refs:  # the reference holds the index of row 0
        for r in rows:
            if r["image"] == "0":
                r["image"] = "10"
    df = pd.DataFrame(rows)
    df.to_csv(path, sep="\t", index=False)
    return df


@pytest.fixture
def bench_tsv(tmp_path):
    path = tmp_path / "bench.tsv"
    make_benchmark(path)
    return path


#: Replies the taught model learns, one per row of the taught benchmark (they differ with the row).
WORDS = ["higher", "lower", "closer", "farther", "left", "right", "above", "below"]


def taught_reply(i: int) -> str:
    return f"<think>{WORDS[i % len(WORDS)]}</think><answer>{'AB'[(i // 2) % 2]}</answer>"


def teach(model_dir, bench_tsv, out_dir, rows: int, steps: int = 80, lr: float = 3e-3):
    """Train the tiny model for ``steps`` steps to give row i of ``bench_tsv`` (i < ``rows``) ``taught_reply(i)``
    on the inference prompt; save it to ``out_dir``. Unseen rows then get replies that vary with the input."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spatialreasoner.evaluate.rows import build_messages, decode_image, read_benchmark

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    df = read_benchmark(bench_tsv).iloc[:rows]
    targets = [taught_reply(i) + "<|im_end|>" for i in range(len(df))]
    texts = [
        processor.apply_chat_template(build_messages(row, None), add_generation_prompt=True) + target
        for row, target in zip(df.to_dict("records"), targets, strict=True)
    ]
    images = [decode_image(cell, i) for cell, i in zip(df["image"], df["index"], strict=True)]
    processor.tokenizer.padding_side = "left"  # every reply ends its row: the loss covers its last tokens
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    for i, target in enumerate(targets):
        labels[i, : -len(processor.tokenizer(target)["input_ids"])] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir, float(loss.item())
