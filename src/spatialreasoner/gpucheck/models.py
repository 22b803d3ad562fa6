"""Build the model folders gpu-check measures: Qwen2.5-VL-7B- or 3B-shaped with random weights, or the tiny model.

The shapes are the kept published architectures (``architectures``); the tokenizer and processor are the locally
built ones of ``spatialreasoner.tiny_model`` with the paper's pixel limits, and the config's token ids follow that
tokenizer. The vocabulary keeps its published size, so embeddings, the output layer and the logits are full-sized.
Weights are initialised on the GPU in bf16 and saved as an ordinary model folder, which every stage loads the way the
workflow loads a checkpoint.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from spatialreasoner.gpucheck.common import finish

# Config keys naming special tokens -> the token.
TOKEN_KEYS = {
    "bos_token_id": "<|im_end|>",
    "eos_token_id": "<|im_end|>",
    "pad_token_id": "<|endoftext|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "vision_token_id": "<|vision_pad|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}


def published_config(name: str, tokenizer):
    """The ``Qwen2_5_VLConfig`` of a kept architecture, its token ids set to ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig

    from spatialreasoner.gpucheck.architectures import architecture

    values = architecture(name)
    for key, token in TOKEN_KEYS.items():
        values[key] = tokenizer.convert_tokens_to_ids(token)
    return Qwen2_5_VLConfig.from_dict(values)


def build(spec: dict) -> dict:
    """Write the model folder ``spec["out"]`` for ``spec["model"]`` (``7b``, ``3b`` or ``tiny``)."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from spatialreasoner import tiny_model
    from spatialreasoner.utils import atomic_path, write_json_atomic

    name, out = spec["model"], Path(spec["out"])
    min_pixels, max_pixels = int(spec["min_pixels"]), int(spec["max_pixels"])
    t0 = time.perf_counter()
    if name == "tiny":
        tiny_model.build_tiny_model(out, seed=int(spec.get("seed", 0)), min_pixels=min_pixels, max_pixels=max_pixels)
        from transformers import AutoConfig

        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(out))
        params = sum(p.numel() for p in model.parameters())
        return {
            "model": name,
            "dir": str(out),
            "parameters": params,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }

    needed = 2.2 * _parameters(name)  # bf16 weights plus slack
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
    if free < needed:
        raise OSError(f"{out.parent} has {free / 2**30:.1f} GiB free; the {name} weights need {needed / 2**30:.1f} GiB")
    torch.manual_seed(int(spec.get("seed", 0)))
    tokenizer = tiny_model.build_tokenizer()
    processor = tiny_model.build_processor(tokenizer, min_pixels, max_pixels)
    config = published_config(name, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    params = sum(p.numel() for p in model.parameters())
    init_seconds = time.perf_counter() - t0
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB")
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / "gpucheck_model.json", {"architecture": name, "parameters": params, "random": True})
    return {
        "model": name,
        "dir": str(out),
        "parameters": params,
        "init_seconds": round(init_seconds, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }


def _parameters(name: str) -> int:
    from spatialreasoner.gpucheck.architectures import architecture, parameter_counts

    return parameter_counts(architecture(name))["total"]


if __name__ == "__main__":
    finish(build)
