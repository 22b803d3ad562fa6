"""Greedy batched inference of a model folder on a VLMEvalKit benchmark TSV, resumable and data-parallel over GPUs.

Finished rows go to append-only shard files as they complete, so a rerun after a kill generates only missing rows.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.errors import DataError
from spatialreasoner.modeling import check_model_dir
from spatialreasoner.prompts import format_question, present_options
from spatialreasoner.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

#: Columns generation adds to the benchmark's own: the reply, the batch's wall time divided by its rows, the number
#: of generated tokens (up to the end-of-turn token), and why a row was skipped (bad image) if it was.
PREDICTION_COLUMNS = ("prediction", "gen_seconds", "gen_tokens", "error")
#: Excel's limit on the characters of one cell.
XLSX_CELL_LIMIT = 32767
#: VLMEvalKit stores an image once and lets other rows refer to it by index: an ``image`` cell this short is a
#: reference, not base64 data.
IMAGE_REF_MAX_LEN = 64
SHARD_META = "meta.json"


# ---------------------------------------------------------------- benchmark rows and images


def read_benchmark(path: str | Path) -> pd.DataFrame:
    """The benchmark TSV as text cells (``NA`` stays a string), image references resolved; checks the columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark {path} does not exist")
    try:
        df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""], dtype={"image": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"benchmark {path}: cannot read as TSV: {exc}") from exc
    missing = [c for c in ("index", "question", "A", "B", "image") if c not in df.columns]
    if missing:
        raise DataError(f"benchmark {path}: missing column(s) {', '.join(missing)}")
    dup = df["index"][df["index"].duplicated()].tolist()
    if dup:
        raise DataError(f"benchmark {path}: duplicate index {', '.join(map(str, dup[:5]))}")
    df["image"] = resolve_image_refs(df["index"], df["image"])
    return df


def resolve_image_refs(index: pd.Series, image: pd.Series) -> list:
    """Replace VLMEvalKit's short image cells (the index of another row holding the image) by that row's data."""
    by_index = dict(zip(index.astype(str), image, strict=True))
    out = []
    for cell in image:
        if isinstance(cell, str) and len(cell) <= IMAGE_REF_MAX_LEN and cell in by_index:
            target = by_index[cell]
            if isinstance(target, str) and len(target) > IMAGE_REF_MAX_LEN:
                cell = target
        out.append(cell)
    return out


def decode_image(cell, index):
    """A base64 image cell as an RGB PIL image; a DataError naming the row's ``index`` if it does not decode."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(cell, str) or not cell:
        raise DataError(f"benchmark row index {index}: empty image cell")
    try:
        raw = base64.b64decode(cell, validate=False)
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"benchmark row index {index}: image does not decode ({type(exc).__name__}: {exc})") from exc


def build_messages(row, system_prompt: str | None) -> list[dict]:
    """The official evaluation prompt: optional system prompt, then the image and the question with its options."""
    text = format_question(str(row["question"]), present_options(row))
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages


# ---------------------------------------------------------------- shards (resumability)


def _fingerprint(settings: dict, model: Path, benchmark: Path) -> dict:
    """What the shards' rows depend on; shards made with anything else are stale."""
    weights = sorted(p for p in model.glob("*.safetensors*"))
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights]
    bstat = benchmark.stat()
    return {
        **settings,
        "model": str(model.resolve()),
        "weights": hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16],
        "benchmark": str(benchmark.resolve()),
        "benchmark_stat": [bstat.st_size, int(bstat.st_mtime)],
    }


def prepare_shard_dir(shard_dir: Path, fingerprint: dict) -> None:
    """Create ``shard_dir``; drop its shards if they were made with other settings (named in the log)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    meta_path = shard_dir / SHARD_META
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old or {}) if (old or {}).get(k) != fingerprint.get(k))
            log.warning("shards in %s were made with other settings (%s); starting afresh", shard_dir, changed)
            for p in shard_dir.glob("*.jsonl"):
                p.unlink()
    write_json_atomic(meta_path, fingerprint)


def read_shards(shard_dir: Path) -> dict[str, dict]:
    """Finished rows by index (as text). A line cut short by a kill is ignored: that row is generated again."""
    done: dict[str, dict] = {}
    for path in sorted(shard_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    continue  # a partial last line from a killed writer
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[str(rec["index"])] = rec
    return done


class ShardWriter:
    """Appends finished rows as JSON lines to a file of its own, flushed and synced per batch."""

    def __init__(self, shard_dir: Path, rank: int):
        self.path = shard_dir / f"rows-{rank}-{uuid.uuid4().hex[:8]}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, records: Sequence[dict]) -> None:
        self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------- generation


def _device_for(rank: int, n_workers: int) -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def _load(settings: dict, device: str):
    import torch

    from spatialreasoner.modeling import load_model, load_processor, resolve_attn_implementation

    processor = load_processor(settings["model"], settings.get("min_pixels"), settings.get("max_pixels"))
    # Batched generation needs the prompt's end aligned at the right edge.
    processor.tokenizer.padding_side = "left"
    dtype = settings.get("dtype", "auto")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    attn = resolve_attn_implementation(settings.get("attn_implementation", "auto"))
    if not device.startswith("cuda") and attn == "flash_attention_2":
        attn = "sdpa"
    # On a GPU the weights load straight onto it (no full copy in host memory per worker).
    placement = {"device_map": device} if device.startswith("cuda") else {}
    model = load_model(settings["model"], dtype=dtype, attn_implementation=attn, **placement).to(device).eval()
    if device == "cpu" and settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    return processor, model


def _generation_config(model, max_new_tokens: int):
    """Greedy decoding: no sampling knobs and no repetition penalty from the checkpoint's generation_config."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.repetition_penalty = None
    config.max_new_tokens = max_new_tokens
    return config


def generate_rows(
    rows: pd.DataFrame,
    settings: dict,
    device: str,
    on_batch: Callable[[list[dict], list[dict]], None],
) -> None:
    """Generate a prediction for every row (benchmark columns incl. the image).

    After each batch, ``on_batch(done, skipped)`` gets the finished rows and those skipped for a bad image.
    """
    import torch

    processor, model = _load(settings, device)
    gen_config = _generation_config(model, settings["max_new_tokens"])
    tokenizer = processor.tokenizer
    stop_ids = {i for i in (tokenizer.pad_token_id, *np.atleast_1d(gen_config.eos_token_id or [])) if i is not None}
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
            inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(device)
            with torch.inference_mode():
                out = model.generate(**inputs, generation_config=gen_config)
            new = out[:, inputs["input_ids"].shape[1] :].cpu()
            seconds = (time.perf_counter() - t0) / len(kept)
            for row, ids in zip(kept, new, strict=True):
                ids = ids.tolist()
                length = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
                text = tokenizer.decode(ids[:length], skip_special_tokens=True)
                results.append(
                    {
                        "index": row["index"],
                        "prediction": text,
                        "gen_seconds": round(seconds, 4),
                        "gen_tokens": length,
                        "error": None,
                    }
                )
        on_batch(results, failed)


def _worker(rank: int, n_workers: int, settings: dict, indices: list[str], shard_dir: str, progress) -> None:
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
                _device_for(rank, n_workers),
                lambda done, failed: (writer.write(done), progress.put(("rows", len(done), failed))),
            )
        finally:
            writer.close()
        progress.put(("done", rank, None))
    except Exception as exc:  # reported to the parent, which raises
        progress.put(("error", rank, f"{type(exc).__name__}: {exc}", isinstance(exc, DataError)))
        raise


def default_workers() -> int:
    """One worker per visible GPU; one on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


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
) -> dict:
    """Generate missing rows (resuming from shards), then write the predictions parquet and its .xlsx export."""
    model = check_model_dir(model)
    benchmark = Path(benchmark)
    out = Path(out)
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise DataError("batch_size and max_new_tokens must be at least 1")
    shard_dir = Path(shard_dir) if shard_dir else out.with_name(f".{out.stem}.shards")
    df = read_benchmark(benchmark)
    settings = {
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "dtype": dtype,
    }
    prepare_shard_dir(shard_dir, _fingerprint(settings, model, benchmark))
    settings |= {
        "model": str(model),
        "benchmark": str(benchmark),
        "batch_size": batch_size,
        "on_bad_image": on_bad_image,
        "attn_implementation": attn_implementation,
        "log_file": log_file,
    }
    done = read_shards(shard_dir)
    todo = [str(i) for i in df["index"] if str(i) not in done]
    log.info(
        "%s on %s: %d rows, %d already in shards, %d to generate",
        model.name,
        benchmark.name,
        len(df),
        len(df) - len(todo),
        len(todo),
    )
    n_workers = max(1, min(workers or default_workers(), len(todo))) if todo else 0
    t0 = time.perf_counter()
    failed = _generate(df, todo, settings, shard_dir, n_workers) if todo else []
    elapsed = time.perf_counter() - t0
    if todo:
        log.info(
            "generated %d rows in %.1f s (%.2f rows/s) with %d worker(s)",
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
    with atomic_path(out) as tmp:
        preds.to_parquet(tmp, index=False)
    xlsx = Path(xlsx) if xlsx else out.with_suffix(".xlsx")
    long_cells = export_xlsx(preds, xlsx)
    summary = {
        "rows": len(preds),
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
            try:
                generate_rows(
                    rows, settings, _device_for(0, 1), lambda done, bad: (writer.write(done), advance(len(done), bad))
                )
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
    procs = [
        ctx.Process(target=_worker, args=(rank, n_workers, settings, chunk, str(shard_dir), progress), daemon=True)
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


def merge_predictions(df: pd.DataFrame, done: dict[str, dict], failed: Sequence[dict]) -> pd.DataFrame:
    """Benchmark columns without the image, in benchmark order, plus the generated columns."""
    by_index = dict(done)
    for rec in failed:
        by_index.setdefault(str(rec["index"]), rec)
    keys = df["index"].astype(str)
    out = df.drop(columns=["image"]).reset_index(drop=True)
    for col in PREDICTION_COLUMNS:
        out[col] = [by_index.get(k, {}).get(col) for k in keys]
    out["gen_seconds"] = pd.to_numeric(out["gen_seconds"], errors="coerce").astype("float64")
    out["gen_tokens"] = pd.to_numeric(out["gen_tokens"], errors="coerce").astype("Int64")
    out["prediction"] = out["prediction"].astype("string")
    out["error"] = out["error"].astype("string")
    return out


# ---------------------------------------------------------------- xlsx export


def export_xlsx(preds: pd.DataFrame, path: str | Path) -> list[dict]:
    """Write the VLMEvalKit-style .xlsx: text stays text (never a formula, URL or number).

    Excel cells hold at most 32,767 characters: longer ones are cut to fit with a visible marker, and each is
    logged and returned (index, column, length); the parquet keeps the full text.
    """
    path = Path(path)
    frame = preds.copy()
    long_cells = []
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            for pos, value in enumerate(frame[col]):
                if isinstance(value, str) and len(value) > XLSX_CELL_LIMIT:
                    marker = f" [cut: {len(value)} characters in total; see the parquet]"
                    frame.iat[pos, frame.columns.get_loc(col)] = value[: XLSX_CELL_LIMIT - len(marker)] + marker
                    long_cells.append({"index": str(frame["index"].iat[pos]), "column": col, "length": len(value)})
    for cell in long_cells:
        log.warning(
            "%s: index %s column %s has %d characters, over Excel's %d; cut with a marker in the xlsx",
            path.name,
            cell["index"],
            cell["column"],
            cell["length"],
            XLSX_CELL_LIMIT,
        )
    options = {"strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False}
    with atomic_path(path) as tmp:
        tmp_xlsx = tmp.with_suffix(".xlsx")  # pandas picks the engine by suffix
        with pd.ExcelWriter(tmp_xlsx, engine="xlsxwriter", engine_kwargs={"options": options}) as writer:
            frame.to_excel(writer, index=False)
        os.replace(tmp_xlsx, tmp)
    return long_cells


# ---------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (weights, processor, tokenizer)")
    parser.add_argument("--benchmark", required=True, help="VLMEvalKit benchmark TSV (base64 image column)")
    parser.add_argument("--out", required=True, help="predictions parquet; the .xlsx export goes next to it")
    parser.add_argument("--xlsx", default=None, help="path of the .xlsx export (default: --out with .xlsx)")
    parser.add_argument(
        "--system-prompt", default="none", help="system prompt text, or 'none' for the chat template's default"
    )
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-dir", default=None, help="resumable shards (default: hidden folder next to --out)")
    parser.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    parser.add_argument("--workers", type=int, default=None, help="data-parallel workers (default: one per GPU)")
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float32")
    parser.add_argument("--attn-implementation", default="auto")


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
    )
    print(json.dumps(summary))
    return 0
