"""Greedy batched inference of a model folder on a VLMEvalKit benchmark TSV, resumable and data-parallel over GPUs.

Generation goes through a backend (``evaluate/backends``: transformers or vLLM); the prompts, the shards (finished
rows are appended as they complete, so a rerun after a kill generates only missing rows), the workers and the export
are the same for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.budget import check_benchmark_budget
from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.backends import (
    BACKENDS,
    check_backend,
    default_workers,
    gpus_per_worker,
    open_backend,
    stop_token_ids,
    worker_gpus,
)
from spatialreasoner.evaluate.export import PREDICTION_COLUMNS, XLSX_CELL_LIMIT, export_xlsx, merge_predictions
from spatialreasoner.evaluate.rows import IMAGE_REF_MAX_LEN, build_messages, decode_image, read_benchmark
from spatialreasoner.evaluate.shards import ShardWriter, prepare_shard_dir, read_shards
from spatialreasoner.evaluate.shards import fingerprint as _fingerprint
from spatialreasoner.modeling import check_model_dir
from spatialreasoner.utils import atomic_path

__all__ = [
    "BACKENDS",
    "IMAGE_REF_MAX_LEN",
    "PREDICTION_COLUMNS",
    "XLSX_CELL_LIMIT",
    "build_messages",
    "decode_image",
    "export_xlsx",
    "generate_rows",
    "read_benchmark",
    "read_shards",
    "run_inference",
]

log = logging.getLogger(__name__)

#: Settings that only the vLLM backend reads (left out of the transformers backend's shard fingerprint).
VLLM_SETTINGS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")


def processor_pixel_limits(model: Path, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """The (lower, upper) pixel limits of the model's image processor as inference loads it."""
    from spatialreasoner.modeling import load_processor

    size = load_processor(model, min_pixels, max_pixels).image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def limits_of_counterpart(folder: str | Path, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """The pixel limits another model folder's image processor ships with (a trained model's released counterpart),
    read when inference starts; given together with explicit limits, a DataError naming both."""
    if min_pixels is not None or max_pixels is not None:
        raise DataError(
            f"pixel limits from {folder} and explicit --min-pixels/--max-pixels both given; choose one "
            "(evaluate.models.<name>.pixels_from or min_pixels/max_pixels)"
        )
    limits = processor_pixel_limits(check_model_dir(folder, verify=False), None, None)
    log.info("pixel limits %d to %d read from %s's image processor", *limits, Path(folder).name)
    return limits


def generate_rows(
    rows: pd.DataFrame,
    settings: dict,
    gpus: list[int] | None,
    on_batch: Callable[[list[dict], list[dict]], None],
) -> None:
    """Generate a prediction for every row (benchmark columns incl. the image) with ``settings["backend"]``.

    After each batch, ``on_batch(done, skipped)`` gets the finished rows and those skipped for a bad image.
    """
    from spatialreasoner.modeling import load_processor

    # The prompt text and the decoding of replies come from the model's own processor for every backend.
    processor = load_processor(settings["model"], settings.get("min_pixels"), settings.get("max_pixels"))
    tokenizer = processor.tokenizer
    stop_ids = stop_token_ids(settings["model"], tokenizer)
    backend = open_backend(settings.get("backend", "hf"), settings, gpus)
    system_prompt = settings.get("system_prompt")
    batch_size = settings["batch_size"]
    records = rows.to_dict("records")
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images, texts, kept, failed = [], [], [], []
        for row in batch:
            try:
                image = decode_image(row["image"], row["index"])
            except DataError as exc:
                if settings["on_bad_image"] == "error":
                    raise
                failed.append(
                    {"index": row["index"], "prediction": None, "gen_seconds": 0.0, "gen_tokens": 0, "error": str(exc)}
                )
                continue
            images.append(image)
            texts.append(processor.apply_chat_template(build_messages(row, system_prompt), add_generation_prompt=True))
            kept.append(row)
        results = []
        if kept:
            t0 = time.perf_counter()
            generated = backend.generate(texts, images)
            seconds = (time.perf_counter() - t0) / len(kept)
            for row, ids in zip(kept, generated, strict=True):
                length = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
                results.append(
                    {
                        "index": row["index"],
                        "prediction": tokenizer.decode(ids[:length], skip_special_tokens=True),
                        "gen_seconds": round(seconds, 4),
                        "gen_tokens": length,
                        "error": None,
                    }
                )
        on_batch(results, failed)


def _worker(rank: int, settings: dict, indices: list[str], shard_dir: str, progress) -> None:
    """One data-parallel worker (its own process): read its rows, generate, append to its shard, report progress."""
    from spatialreasoner.utils import setup_logging

    setup_logging(settings.get("log_file"))
    try:
        df = read_benchmark(settings["benchmark"])
        rows = df[df["index"].astype(str).isin(set(indices))]
        writer = ShardWriter(Path(shard_dir), rank)
        try:
            generate_rows(
                rows,
                settings,
                worker_gpus(rank, gpus_per_worker(settings["backend"], settings)),
                lambda done, failed: (writer.write(done), progress.put(("rows", len(done), failed))),
            )
        finally:
            writer.close()
        progress.put(("done", rank, None))
    except Exception as exc:  # reported to the parent, which raises
        progress.put(("error", rank, f"{type(exc).__name__}: {exc}", isinstance(exc, DataError)))
        raise


def run_inference(
    model: str | Path,
    benchmark: str | Path,
    out: str | Path,
    system_prompt: str | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    shard_dir: str | Path | None = None,
    on_bad_image: str = "error",
    workers: int | None = None,
    xlsx: str | Path | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    dtype: str = "auto",
    attn_implementation: str = "auto",
    log_file: str | None = None,
    backend: str = "hf",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    pixels_from: str | Path | None = None,
) -> dict:
    """Generate missing rows (resuming from shards), then write the predictions parquet and its .xlsx export.

    ``pixels_from``: a model folder whose image processor's pixel limits inference uses (instead of ``min_pixels``
    / ``max_pixels``), recorded in the predictions as ``pixels_from`` (the folder's name).

    ``backend`` is ``hf`` (transformers ``generate``) or ``vllm`` (vLLM's offline engine; ``tensor_parallel_size``
    GPUs per engine, ``gpu_memory_utilization`` and ``max_model_len`` as vLLM's). Workers: one per GPU (per
    ``tensor_parallel_size`` GPUs with vLLM), one on CPU.
    """
    check_backend(backend)
    model = check_model_dir(model)
    benchmark = Path(benchmark)
    out = Path(out)
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise DataError("batch_size and max_new_tokens must be at least 1")
    if backend == "vllm" and (tensor_parallel_size < 1 or not 0 < gpu_memory_utilization <= 1):
        raise DataError("tensor_parallel_size must be at least 1 and gpu_memory_utilization in (0, 1]")
    shard_dir = Path(shard_dir) if shard_dir else out.with_name(f".{out.stem}.shards")
    if pixels_from is not None:
        min_pixels, max_pixels = limits_of_counterpart(pixels_from, min_pixels, max_pixels)
    df = read_benchmark(benchmark)
    # Every prompt plus max_new_tokens within the model's context, before any worker loads the model.
    check_benchmark_budget(model, df, system_prompt, max_new_tokens, min_pixels, max_pixels, max_model_len)
    settings = {
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "dtype": dtype,
        "backend": backend,
    }
    prepare_shard_dir(shard_dir, _fingerprint(settings, model, benchmark))
    settings |= {
        "model": str(model),
        "benchmark": str(benchmark),
        "batch_size": batch_size,
        "on_bad_image": on_bad_image,
        "attn_implementation": attn_implementation,
        "log_file": log_file,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
    }
    done = read_shards(shard_dir)
    todo = [str(i) for i in df["index"] if str(i) not in done]
    log.info(
        "%s on %s with the %s backend: %d rows, %d already in shards, %d to generate",
        model.name,
        benchmark.name,
        backend,
        len(df),
        len(df) - len(todo),
        len(todo),
    )
    per_worker = gpus_per_worker(backend, settings)
    n_workers = max(1, min(workers or default_workers(per_worker), len(todo))) if todo else 0
    t0 = time.perf_counter()
    failed = _generate(df, todo, settings, shard_dir, n_workers) if todo else []
    elapsed = time.perf_counter() - t0
    if todo:
        log.info(
            "generated %d rows in %.1f s (%.2f rows/s, model loading included) with %d worker(s)",
            len(todo) - len(failed),
            elapsed,
            (len(todo) - len(failed)) / max(elapsed, 1e-9),
            n_workers,
        )

    done = read_shards(shard_dir)
    preds = merge_predictions(df, done, failed)
    missing = preds.loc[preds["prediction"].isna() & preds["error"].isna(), "index"].tolist()
    if missing:
        raise DataError(f"no prediction for {len(missing)} row(s) after generation: index {missing[:5]}")
    # The pixel limits the image processor applied (configured, or the model folder's own), for the score summary.
    preds["min_pixels"], preds["max_pixels"] = processor_pixel_limits(model, min_pixels, max_pixels)
    if pixels_from is not None:
        preds["pixels_from"] = Path(pixels_from).name
    with atomic_path(out) as tmp:
        preds.to_parquet(tmp, index=False)
    xlsx = Path(xlsx) if xlsx else out.with_suffix(".xlsx")
    long_cells = export_xlsx(preds, xlsx)
    summary = {
        "rows": len(preds),
        "backend": backend,
        "generated": len(todo) - len(failed),
        "resumed": len(df) - len(todo),
        "skipped_bad_image": len(failed),
        "workers": n_workers,
        "seconds": round(elapsed, 2),
        "rows_per_second": round((len(todo) - len(failed)) / elapsed, 3) if todo and elapsed > 0 else None,
        "mean_gen_tokens": round(float(preds["gen_tokens"].mean()), 2),
        "xlsx_long_cells": long_cells,
    }
    if failed:
        log.warning(
            "skipped %d row(s) whose image does not decode: index %s", len(failed), [f["index"] for f in failed[:5]]
        )
    # The shards only serve crash recovery; once the parquet exists a rerun is meant to generate afresh.
    shutil.rmtree(shard_dir, ignore_errors=True)
    log.info("wrote %s and %s", out, xlsx)
    return summary


def _generate(df: pd.DataFrame, todo: list[str], settings: dict, shard_dir: Path, n_workers: int) -> list[dict]:
    """Run the workers over ``todo`` with one progress bar; return the rows skipped for a bad image."""
    from tqdm import tqdm

    failed: list[dict] = []
    bar = tqdm(total=len(todo), unit="row", desc="infer", dynamic_ncols=True, mininterval=1.0)
    rows_done = 0
    last_log = time.perf_counter()
    t0 = last_log

    def advance(n: int, bad: list[dict]) -> None:
        nonlocal rows_done, last_log
        failed.extend(bad)
        rows_done += n + len(bad)
        bar.update(n + len(bad))
        now = time.perf_counter()
        if now - last_log > 30 or rows_done == len(todo):  # a few lines in the rule's log, not one per batch
            log.info("%d/%d rows, %.2f rows/s", rows_done, len(todo), rows_done / max(now - t0, 1e-9))
            last_log = now

    try:
        if n_workers == 1:
            writer = ShardWriter(shard_dir, 0)
            rows = df[df["index"].astype(str).isin(set(todo))]
            gpus = worker_gpus(0, gpus_per_worker(settings["backend"], settings))
            try:
                generate_rows(rows, settings, gpus, lambda done, bad: (writer.write(done), advance(len(done), bad)))
            finally:
                writer.close()
        else:
            _generate_parallel(todo, settings, shard_dir, n_workers, advance)
    finally:
        bar.close()
    return failed


def _generate_parallel(todo, settings, shard_dir, n_workers, advance) -> None:
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")  # CUDA cannot be initialised in forked children
    progress = ctx.Queue()
    if not torch.cuda.is_available():
        settings = {**settings, "threads": max(1, (os.cpu_count() or 1) // n_workers)}
    chunks = [list(c) for c in np.array_split(np.array(todo, dtype=object), n_workers)]
    # Not daemonic: a vLLM worker starts its own engine process.
    procs = [
        ctx.Process(target=_worker, args=(rank, settings, chunk, str(shard_dir), progress), daemon=False)
        for rank, chunk in enumerate(chunks)
    ]
    for p in procs:
        p.start()
    finished, error = set(), None
    try:
        while len(finished) < len(procs) and error is None:
            try:
                msg = progress.get(timeout=5)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in finished]
                if dead:
                    error = (f"worker(s) {dead} exited with code {[procs[i].exitcode for i in dead]}", False)
                continue
            if msg[0] == "rows":
                advance(msg[1], msg[2])
            elif msg[0] == "done":
                finished.add(msg[1])
            else:
                error = (f"worker {msg[1]}: {msg[2]}", msg[3])
    except BaseException:
        error = error or ("interrupted", False)
        raise
    finally:
        for p in procs:
            if error is not None and p.is_alive():  # a failed or interrupted run stops every worker
                p.terminate()
            p.join()
    if error is not None:
        if error[1]:
            raise DataError(error[0])
        raise RuntimeError(error[0])


# ---------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (weights, processor, tokenizer)")
    parser.add_argument("--benchmark", required=True, help="VLMEvalKit benchmark TSV (base64 image column)")
    parser.add_argument("--out", required=True, help="predictions parquet; the .xlsx export goes next to it")
    parser.add_argument("--xlsx", default=None, help="path of the .xlsx export (default: --out with .xlsx)")
    parser.add_argument(
        "--system-prompt", default="none", help="system prompt text, or 'none' for the chat template's default"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="hf",
        help="generation backend: transformers generate (hf) or vLLM's offline engine (vllm) (default: hf)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="greedy decoding length limit per reply (default: 512)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="rows per generate call in each worker: one left-padded batch (hf) or one group of requests that vLLM "
        "schedules itself (vllm) (default: 8)",
    )
    parser.add_argument("--shard-dir", default=None, help="resumable shards (default: hidden folder next to --out)")
    parser.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default="error",
        help="an image that does not decode: stop naming its index (error), or skip the row, scored as wrong (skip)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-parallel workers (default: one per GPU, or per --tensor-parallel-size GPUs with vllm)",
    )
    parser.add_argument(
        "--min-pixels", type=int, default=None, help="image processor lower pixel limit (default: the model folder's)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="image processor upper pixel limit (default: the model folder's)"
    )
    parser.add_argument(
        "--pixels-from",
        default=None,
        help="model folder whose image processor's pixel limits to use, read at start (not with --min/--max-pixels)",
    )
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32")
    parser.add_argument("--attn-implementation", default="auto", help="hf backend only")
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="vllm: GPUs of one engine (default: 1, data parallel)"
    )
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="vllm: share of each GPU's memory (default: 0.9)"
    )
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="vllm: prompt + reply token limit (default: the model's)"
    )


def run(args: argparse.Namespace) -> int:
    system_prompt = None if args.system_prompt.strip().lower() in ("", "none") else args.system_prompt
    summary = run_inference(
        args.model,
        args.benchmark,
        args.out,
        system_prompt=system_prompt,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        shard_dir=args.shard_dir,
        on_bad_image=args.on_bad_image,
        workers=args.workers,
        xlsx=args.xlsx,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        log_file=args.log,
        backend=args.backend,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        pixels_from=args.pixels_from,
    )
    print(json.dumps(summary))
    return 0
