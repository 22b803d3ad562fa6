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


def make_benchmark(path, n=6, bad=(), refs=()):
    """``n`` 3DSRBench-style rows with questions of different lengths; ``bad`` rows get an undecodable image,
    ``refs`` rows refer to row 0's image by index as VLMEvalKit does."""
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
                "question": "Is the red cube higher than the blue ball?" + " Look closely." * i,
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
