"""gpu-check stage: greedy inference with the evaluation prompt through the workflow's backends (transformers, vLLM).

The transformers stage measures rows/s at the official batch and then at other batch sizes while time is left, and
writes the prompts and the greedy token ids of the official batch; the vLLM stage generates for the same prompts and
measures how far its greedy tokens agree with them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from spatialreasoner.gpucheck.common import Deadline, finish, peak_memory, reset_peak_memory, synchronize


def prompt_rows(spec: dict, processor) -> list[dict]:
    """Rows with the official evaluation prompt (no system prompt) as text, and their image paths."""
    from spatialreasoner.evaluate.rows import build_messages
    from spatialreasoner.gpucheck.data import inference_rows

    rows = inference_rows(Path(spec["workdir"]) / "data", int(spec["rows"]), int(spec["image_side"]))
    for row in rows:
        row["prompt"] = processor.apply_chat_template(build_messages(row, None), add_generation_prompt=True)
    return rows


def until_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to (without) the first end-of-turn or padding id."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i]
    return ids


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How far two backends' greedy outputs for the same prompts agree, token by token."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"cannot compare {len(reference)} and {len(other)} outputs")
    identical = sum(a == b for a, b in zip(reference, other, strict=True))
    first = sum(bool(a) and bool(b) and a[0] == b[0] for a, b in zip(reference, other, strict=True))
    prefix = []
    for a, b in zip(reference, other, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prefix.append(n / max(len(a), len(b), 1))
    return {
        "compared_rows": len(reference),
        "identical_rows": identical,
        "identical_fraction": round(identical / len(reference), 4),
        "first_token_agreement": round(first / len(reference), 4),
        "mean_common_prefix_fraction": round(sum(prefix) / len(prefix), 4),
    }


def backend_settings(spec: dict) -> dict:
    """The evaluation backends' settings for this stage: bf16 on CUDA, the paper's pixel limits and length."""
    return {
        "model": spec["model_dir"],
        "min_pixels": int(spec["min_pixels"]),
        "max_pixels": int(spec["max_pixels"]),
        "dtype": "auto",
        "attn_implementation": spec.get("attn", "auto"),
        "max_new_tokens": int(spec["max_new_tokens"]),
        "max_model_len": int(spec["max_model_len"]),
        "gpu_memory_utilization": float(spec.get("gpu_memory_utilization", 0.85)),
    }


def _open(name: str, spec: dict):
    import torch

    from spatialreasoner.evaluate.backends import open_backend, stop_token_ids

    t0 = time.perf_counter()
    backend = open_backend(name, backend_settings(spec), [0] if torch.cuda.is_available() else None)
    seconds = time.perf_counter() - t0
    from transformers import AutoTokenizer

    stop_ids = stop_token_ids(spec["model_dir"], AutoTokenizer.from_pretrained(spec["model_dir"]))
    return backend, stop_ids, seconds


def run_hf(spec: dict) -> dict:
    """rows/s of the workflow's transformers backend at the official batch, then at the other batch sizes."""
    import torch
    from PIL import Image

    deadline = Deadline(spec["cap"])
    backend, stop_ids, load_seconds = _open("hf", spec)
    rows = prompt_rows(spec, backend.processor)
    images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
    # A short warm-up call first, so that the first measured batch does not pay for one-time set-up.
    config = backend.generation_config
    full, config.max_new_tokens = config.max_new_tokens, 2
    backend.generate([rows[0]["prompt"]] * 2, [images[0]] * 2)
    config.max_new_tokens = full
    official = int(spec["official_batch"])
    sweep, reference_ids = [], None
    for bs in [official, *[b for b in spec["batch_sizes"] if b != official]]:
        if (
            sweep
            and "seconds" in sweep[-1]
            and deadline.left() < sweep[-1]["seconds"] * max(bs / sweep[-1]["batch"], 1)
        ):
            sweep.append({"batch": bs, "status": "skipped", "reason": "time cap"})
            continue
        idx = [i % len(rows) for i in range(bs)]
        try:
            reset_peak_memory()
            synchronize()
            t = time.perf_counter()
            out = backend.generate([rows[i]["prompt"] for i in idx], [images[i] for i in idx])
            synchronize()
            seconds = time.perf_counter() - t
        except torch.cuda.OutOfMemoryError as exc:
            sweep.append({"batch": bs, "status": "error", "reason": f"out of memory: {str(exc).splitlines()[0]}"})
            torch.cuda.empty_cache()
            continue
        new = [until_stop(ids, stop_ids) for ids in out]
        sweep.append(
            {
                "batch": bs,
                "status": "ok",
                "seconds": round(seconds, 3),
                "rows_per_second": round(bs / seconds, 3),
                "generated_tokens_per_second": round(sum(map(len, new)) / seconds, 1),
                "mean_new_tokens": round(sum(map(len, new)) / bs, 1),
                **peak_memory(),
            }
        )
        if bs == official:
            reference_ids = new[: len(rows)]
    ok = [s for s in sweep if s["status"] == "ok"]
    if reference_ids is None:
        raise RuntimeError(f"the official batch {official} did not finish: {sweep[0].get('reason')}")
    best = max(ok, key=lambda s: s["rows_per_second"])
    outputs = Path(spec["workdir"]) / "hf_outputs.json"
    prompts = [{"prompt": r["prompt"], "image_path": r["image_path"]} for r in rows]
    outputs.write_text(json.dumps({"rows": prompts, "ids": reference_ids}))
    return {
        "model": spec["model"],
        "attn": backend.model.config._attn_implementation,
        "load_seconds": round(load_seconds, 2),
        "max_new_tokens": int(spec["max_new_tokens"]),
        "official_batch": official,
        "rows_per_second": next(s["rows_per_second"] for s in ok if s["batch"] == official),
        "best_batch": best["batch"],
        "best_rows_per_second": best["rows_per_second"],
        "sweep": sweep,
        "outputs": str(outputs),
        **peak_memory(),
    }


def run_vllm(spec: dict) -> dict:
    """rows/s of the workflow's vLLM backend on the transformers stage's prompts, and the greedy agreement."""
    import torch
    from PIL import Image

    reference = json.loads(Path(spec["reference"]).read_text()) if spec.get("reference") else None
    cuda = torch.cuda.is_available()
    backend, stop_ids, start_seconds = _open("vllm", spec)
    if reference is not None:
        rows = list(reference["rows"])
    else:
        from spatialreasoner.modeling import load_processor

        rows = prompt_rows(spec, load_processor(spec["model_dir"], spec["min_pixels"], spec["max_pixels"]))
    images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
    t = time.perf_counter()
    out = backend.generate([r["prompt"] for r in rows], images)
    seconds = time.perf_counter() - t
    ids = [until_stop(list(x), stop_ids) for x in out]
    result = {
        "model": spec["model"],
        "engine_start_seconds": round(start_seconds, 2),
        "rows": len(rows),
        "generate_seconds": round(seconds, 3),
        "rows_per_second": round(len(rows) / seconds, 3),
        "generated_tokens_per_second": round(sum(map(len, ids)) / seconds, 1),
        "mean_new_tokens": round(sum(map(len, ids)) / len(ids), 1),
        "max_new_tokens": int(spec["max_new_tokens"]),
        "gpu_memory_utilization": float(spec.get("gpu_memory_utilization", 0.85)) if cuda else None,
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        result |= {"peak_gib": round((total - free) / 2**30, 2), "peak_kind": "device memory in use (vLLM engine)"}
    if reference is not None:
        k = len(reference["ids"])
        result["agreement"] = agreement(reference["ids"], ids[:k])
        result["compared_ids"] = {"transformers": reference["ids"], "vllm": ids[:k]}
    return result


def run(spec: dict) -> dict:
    return run_vllm(spec) if spec["backend"] == "vllm" else run_hf(spec)


if __name__ == "__main__":
    finish(run)
