"""Loading any model folder (tiny, released or trained) through the same Auto classes as the 7B model."""

from __future__ import annotations

import logging
from pathlib import Path

from spatialreasoner.errors import DataError

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(path: str | Path) -> Path:
    """Raise a DataError naming what is missing unless ``path`` holds a model, tokenizer and processor."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"model folder {path} does not exist")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json (model config)")
    if not any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        missing.append("model.safetensors or model.safetensors.index.json (weights)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append("preprocessor_config.json or processor_config.json (image processor)")
    for f in TOKENIZER_FILES:
        if not (path / f).is_file():
            missing.append(f"{f} (tokenizer)")
    if missing:
        raise DataError(f"model folder {path} is incomplete; missing: {', '.join(missing)}")
    return path


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    from transformers import AutoProcessor

    path = check_model_dir(path)
    processor = AutoProcessor.from_pretrained(path)
    if min_pixels is not None or max_pixels is not None:
        # transformers 5 expresses Qwen2-VL's pixel limits as size={shortest_edge: min, longest_edge: max}.
        size = dict(processor.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        processor = AutoProcessor.from_pretrained(path, size=size)
    return processor


def load_model(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa", **kwargs):
    """``AutoModelForImageTextToText`` with the given dtype ("float32", "bfloat16", "auto")."""
    import torch
    from transformers import AutoModelForImageTextToText

    path = check_model_dir(path)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    log.info("loading model from %s (dtype=%s, attn=%s)", path, dtype, attn_implementation)
    return AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
    )


def resolve_attn_implementation(requested: str = "auto") -> str:
    """``flash_attention_2`` when requested or available on a GPU, else ``sdpa``."""
    if requested != "auto":
        return requested
    try:
        import flash_attn  # noqa: F401
        import torch

        if torch.cuda.is_available():
            return "flash_attention_2"
    except ImportError:
        pass
    return "sdpa"
