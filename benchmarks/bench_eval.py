"""Evaluation speed: scoring a 3DSRBench-sized predictions file end to end, and tiny-model inference rows/s.

Run: python benchmarks/bench_eval.py [--skip-inference] [--rows 64] [--max-new-tokens 64] [--batch-sizes 1 8 32]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.evaluate.score import SRB_SUBTYPES, score_file

N_ROWS, N_GROUPS = 11_700, 2_900


def make_3dsrbench_predictions(path: Path, seed: int = 0) -> pd.DataFrame:
    """11,700 rows in 2,900 circular groups (2,800 of 4 rotations, 100 of 5), with reasoning-style predictions."""
    rng = np.random.default_rng(seed)
    sizes = [4] * 2800 + [5] * 100
    assert sum(sizes) == N_ROWS and len(sizes) == N_GROUPS
    rows = []
    for g, size in enumerate(sizes):
        category = SRB_SUBTYPES[g % len(SRB_SUBTYPES)]
        base = f"{g:05d}" + ("-flip" if g % 3 == 0 else "")
        for r in range(size):
            answer = "ABCD"[r % 4]
            guess = answer if rng.random() < 0.7 else "ABCD"[rng.integers(4)]
            reasoning = "The 3D location of the red cube is (0.4, 1.2, 3.5) and of the chair (1.1, 0.9, 4.2). " * 3
            rows.append(
                {
                    "index": len(rows),
                    "qid": base if r == 0 else f"{base}-{r}",
                    "question": f"Is the red cube to the left of the chair? ({g})",
                    "A": "left of the chair",
                    "B": "right of the chair",
                    "C": "behind the chair",
                    "D": "in front of the chair",
                    "answer": answer,
                    "category": category,
                    "prediction": f"<think>{reasoning}</think>\n<answer>{guess}</answer>",
                }
            )
    df = pd.DataFrame(rows)
    df.to_parquet(path, index=False)
    return df


def bench_scoring(tmp: Path) -> None:
    preds = tmp / "bench" / "3DSRBench.parquet"
    preds.parent.mkdir(parents=True)
    make_3dsrbench_predictions(preds)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        summary = score_file(preds, "3DSRBench", tmp / "scores")
        best = min(best, time.perf_counter() - t0)
    print(
        f"scoring 3DSRBench-sized file ({summary['rows']} rows, {summary['groups']} groups), in process: "
        f"{best:.3f} s (best of 3; read + validate + match + group + write)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "spatialreasoner.cli",
        "score",
        "--benchmark",
        "3DSRBench",
        "--predictions",
        str(preds),
        "--reference",
        str(preds),
        "--out",
        str(tmp / "scores-cli"),
    ]
    if hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", "0", *cmd]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    print(
        f"scoring via `spatialreasoner score` on one core, incl. interpreter start and imports: "
        f"{time.perf_counter() - t0:.3f} s"
    )


def make_benchmark_rows(n: int) -> pd.DataFrame:
    from PIL import Image

    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), (40 * i % 255, 120, 200)).save(buf, format="PNG")
        rows.append(
            {
                "index": i,
                "question": f"Is the red cube higher than the blue ball? ({i})",
                "A": "yes",
                "B": "no",
                "image": base64.b64encode(buf.getvalue()).decode(),
            }
        )
    return pd.DataFrame(rows)


def bench_inference(tmp: Path, n_rows: int, max_new_tokens: int, batch_sizes: list[int], device: str) -> None:
    from spatialreasoner.evaluate.infer import generate_rows
    from spatialreasoner.tiny_model import build_tiny_model

    model = build_tiny_model(tmp / "tiny", seed=0)
    rows = make_benchmark_rows(n_rows)
    print(
        f"tiny-model inference on {device}: {n_rows} rows, {max_new_tokens} new tokens each (greedy; the random "
        f"model never stops early), model load excluded"
    )
    for bs in batch_sizes:
        settings = {"model": str(model), "max_new_tokens": max_new_tokens, "batch_size": bs, "on_bad_image": "error"}
        marks: list[float] = []
        gpus = None if device == "cpu" else [int(device.partition(":")[2] or 0)]
        generate_rows(rows, settings, gpus, lambda done, bad, marks=marks: marks.append(time.perf_counter()))
        # time from the end of the first batch (model loaded, warmed up) to the end of the last
        first_batch_rows = min(bs, n_rows)
        rate = (n_rows - first_batch_rows) / (marks[-1] - marks[0]) if len(marks) > 1 else float("nan")
        print(f"  batch size {bs:>3}: {rate:8.1f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without it
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_scoring(Path(tmp))
        if not args.skip_inference:
            bench_inference(Path(tmp), args.rows, args.max_new_tokens, args.batch_sizes, args.device)


if __name__ == "__main__":
    main()
