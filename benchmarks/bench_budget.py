"""Token-budget check speed: an SFT table of 48,000 rows (3D QA with chain of thought, two questions per image) with
images of varied sizes, measured as ``spatialreasoner train`` measures it before training, at the paper's pixel limits.

Usage: python benchmarks/bench_budget.py [--rows 48000] [--per-image 2]. Target: seconds, not minutes. (The tiny
model's tokenizer, a few hundred tokens, cuts text into more pieces than Qwen2.5-VL's; tokenizing dominates.)
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from spatialreasoner.budget import check_training_budget
from spatialreasoner.modeling import load_processor
from spatialreasoner.tiny_model import build_tiny_model

#: The paper's training pixel limits (config/config.yaml `vision`).
MIN_PIXELS, MAX_PIXELS = 59716, 200704


def write_table(root: Path, rows: int, per_image: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    # 100 encoded sizes written to distinct files: every file's header is read, encoding stays cheap.
    encoded = []
    for w, h in rng.integers(200, 1025, size=(100, 2)):
        buf = io.BytesIO()
        Image.new("RGB", (int(w), int(h)), (int(w) % 256, 90, 160)).save(buf, "JPEG", quality=50)
        encoded.append(buf.getvalue())
    for i in range(-(-rows // per_image)):
        (root / "images" / f"{i}.jpg").write_bytes(encoded[i % len(encoded)])
    records = []
    for r in range(rows):
        a, b = ("red cube", "blue ball") if r % 2 else ("green cone", "yellow box")
        steps = " ".join(f"The 3D location of the {a} is ({r % 7}.{k}, 0.5, {k + 2}.0)." for k in range(1 + r % 4))
        records.append({
            "kind": "qa", "source_row": r, "image": str(root / "images" / f"{r // per_image}.jpg"),
            "question": f"Consider the {a} and the {b}. Which one is closer to the camera?" + " Be careful." * (r % 5),
            "A": f"the {a}", "B": f"the {b}", "C": None, "D": None, "answer": "AB"[r % 2],
            "answer_cot": f"<think>{steps} So the {a} is closer.</think><answer>{'AB'[r % 2]}</answer>",
        })  # fmt: skip
    table = root / "sft.parquet"
    pd.DataFrame(records).to_parquet(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48_000)
    parser.add_argument("--per-image", type=int, default=2, help="questions sharing one image")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        table = write_table(root, args.rows, args.per_image)
        model = build_tiny_model(root / "model")
        print(f"setup ({args.rows} rows, {-(-args.rows // args.per_image)} images): {time.perf_counter() - t0:.1f} s")
        processor = load_processor(model, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        import spatialreasoner.train.sft  # noqa: F401  (TRL; a training job has imported it already)

        cfg = {"stage": "sft", "max_length": None}
        t0, c0 = time.perf_counter(), time.process_time()
        summary = check_training_budget(cfg, table, processor, model)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"budget of {summary['rows']} SFT rows: {dt:.2f} s ({summary['rows'] / dt:.0f} rows/s, {cpu:.2f} s of CPU "
        f"time; load average {os.getloadavg()[0]:.1f}); tokens min "
        f"{summary['min']}, median {summary['median']:.0f}, max {summary['max']} (up to {summary['image_tokens_max']}"
        " image tokens)"
    )


if __name__ == "__main__":
    main()
