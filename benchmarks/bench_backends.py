"""Inference rows/s of the transformers and the vLLM backends on the same rows and settings, and their ratio.

Both run ``spatialreasoner.evaluate.infer.generate_rows`` (the shared prompt, decoding and bookkeeping) on the same
benchmark rows, same model, dtype, pixel limits, greedy decoding and ``max_new_tokens``; the clock runs from the end of
each backend's first request group (model loaded, warmed up) to the end of its last, so engine start-up is excluded
and reported apart. On a CPU the tiny model is overhead-bound: the figure that matters is the one on a GPU with a
real model (``--model``).

Run: VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/bench_backends.py [--model DIR] [--rows 96] [--max-new-tokens 64]
     [--hf-batch-size 8] [--vllm-batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def measure(rows, settings: dict) -> dict:
    from spatialreasoner.evaluate.backends import worker_gpus
    from spatialreasoner.evaluate.infer import generate_rows

    marks: list[float] = []
    done: list[dict] = []
    t0 = time.perf_counter()

    def on_batch(finished, bad):
        done.extend(finished)
        marks.append(time.perf_counter())

    generate_rows(rows, settings, worker_gpus(0, int(settings.get("tensor_parallel_size") or 1)), on_batch)
    first = settings["batch_size"]
    timed = len(rows) - min(first, len(rows))
    seconds = marks[-1] - marks[0] if len(marks) > 1 else float("nan")
    return {
        "rows_per_second": timed / seconds if seconds == seconds and seconds > 0 else float("nan"),
        "start_and_first_group_seconds": marks[0] - t0,
        "mean_tokens": sum(r["gen_tokens"] for r in done) / max(len(done), 1),
        "predictions": [r["prediction"] for r in done],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the tiny model, built here)")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--vllm-batch-size", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from bench_eval import make_benchmark_rows

    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without it
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from spatialreasoner.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny", seed=0))
        rows = make_benchmark_rows(args.rows)
        common = {"model": model, "max_new_tokens": args.max_new_tokens, "on_bad_image": "error", "dtype": "auto"}
        hf = measure(rows, {**common, "backend": "hf", "batch_size": args.hf_batch_size})
        vl = measure(rows, {**common, "backend": "vllm", "batch_size": args.vllm_batch_size,
                            "max_model_len": args.max_model_len})  # fmt: skip
    same = sum(a == b for a, b in zip(hf["predictions"], vl["predictions"], strict=True))
    print(f"{args.rows} rows, {args.max_new_tokens} new tokens at most, model {model}")
    for name, r, bs in (("hf", hf, args.hf_batch_size), ("vllm", vl, args.vllm_batch_size)):
        print(f"  {name:>4} (batch {bs:>3}): {r['rows_per_second']:8.2f} rows/s, {r['mean_tokens']:.1f} tokens/row, "
              f"start + first group {r['start_and_first_group_seconds']:.1f} s")  # fmt: skip
    print(f"  vllm / hf rows/s: {vl['rows_per_second'] / hf['rows_per_second']:.2f}")
    print(f"  identical predictions: {same}/{args.rows}")


if __name__ == "__main__":
    main()
