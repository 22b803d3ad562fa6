"""Qwen2.5-VL architectures kept in the repository (no Hub), and the model FLOPs that MFU is measured against.

The dictionaries below are the published architecture values of the ``config.json`` files of
Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct, in the layout those files use; only shapes are taken
from them: the weights built here are random, and token ids follow the locally built tokenizer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

_VISION = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
}

_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}

# Published architecture values of Qwen/Qwen2.5-VL-7B-Instruct's config.json (8,292,166,656 parameters).
QWEN2_5_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    **_TOKENS,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {**_VISION, "out_hidden_size": 3584},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}

# Published architecture values of Qwen/Qwen2.5-VL-3B-Instruct's config.json (3,754,622,976 parameters).
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    **_TOKENS,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {**_VISION, "out_hidden_size": 2048},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}

#: Name used on the command line and in the table -> published architecture.
ARCHITECTURES: dict[str, dict] = {"7b": QWEN2_5_VL_7B, "3b": QWEN2_5_VL_3B}
#: The full model names the short names stand for.
MODEL_NAMES = {"7b": "Qwen2.5-VL-7B-Instruct", "3b": "Qwen2.5-VL-3B-Instruct", "tiny": "tiny Qwen2.5-VL"}


def architecture(name: str) -> dict:
    """A copy of the kept architecture ``name`` (``7b`` or ``3b``)."""
    from spatialreasoner.errors import ConfigError

    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[name])


# ---------------------------------------------------------------- shapes and FLOPs


def shapes(config) -> dict:
    """The sizes FLOPs and memory depend on, from a ``Qwen2_5_VLConfig`` or a ``config.json`` dictionary."""
    if isinstance(config, Mapping):
        text = config.get("text_config") or config
        vision = config["vision_config"]
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        get_t, get_v = text.get, vision.get
    else:
        text, vision = config.text_config, config.vision_config
        tie = bool(getattr(config, "tie_word_embeddings", False))

        def get_t(key, default=None):
            return getattr(text, key, default)

        def get_v(key, default=None):
            return getattr(vision, key, default)

    hidden, heads = int(get_t("hidden_size")), int(get_t("num_attention_heads"))
    return {
        "hidden": hidden,
        "intermediate": int(get_t("intermediate_size")),
        "layers": int(get_t("num_hidden_layers")),
        "heads": heads,
        "kv_heads": int(get_t("num_key_value_heads")),
        "head_dim": int(get_t("head_dim", None) or hidden // heads),
        "vocab": int(get_t("vocab_size")),
        "tie": bool(tie),
        "v_hidden": int(get_v("hidden_size")),
        "v_intermediate": int(get_v("intermediate_size")),
        "v_depth": int(get_v("depth")),
        "v_out": int(get_v("out_hidden_size")),
        "v_merge": int(get_v("spatial_merge_size")),
        "v_patch": int(get_v("patch_size")),
        "v_temporal": int(get_v("temporal_patch_size")),
        "v_window": int(get_v("window_size")),
        "v_full_layers": len(get_v("fullatt_block_indexes") or []),
    }


def parameter_counts(config) -> dict:
    """Parameters by part, computed from the shapes (Qwen2.5-VL's layer layout: biased q/k/v, gated MLPs)."""
    s = shapes(config)
    d, kv = s["hidden"], s["kv_heads"] * s["head_dim"]
    layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * s["intermediate"] + 2 * d
    vd, vi = s["v_hidden"], s["v_intermediate"]
    v_layer = (vd * 3 * vd + 3 * vd) + (vd * vd + vd) + 2 * (vd * vi + vi) + (vi * vd + vd) + 2 * vd
    merged = vd * s["v_merge"] ** 2
    merger = vd + (merged * merged + merged) + (merged * s["v_out"] + s["v_out"])
    patch_embed = 3 * s["v_temporal"] * s["v_patch"] ** 2 * vd
    embed = s["vocab"] * d
    return {
        "vision_blocks": s["v_depth"] * v_layer + patch_embed,
        "vision_merger": merger,
        "text_layers": s["layers"] * layer + d,
        "embed": embed,
        "lm_head": embed,
        "total": s["v_depth"] * v_layer
        + patch_embed
        + merger
        + s["layers"] * layer
        + d
        + embed * (1 if s["tie"] else 2),
    }


def training_flops(config, text_tokens: int, image_patches: int) -> float:
    """Model FLOPs of one training step (forward and backward) over one sequence, without recomputation.

    Dense layers cost 6 FLOPs per parameter and token (PaLM's model FLOPs); attention adds 12 x layers x width x
    context per token (scores and weighted sum, forward and backward). The vision tower runs over the image's
    patches: windowed attention within ``window_size`` pixels except its full-attention blocks; the merger over the
    merged tokens. The input embedding is a lookup and costs nothing.
    """
    s = shapes(config)
    p = parameter_counts(config)
    text = 6 * (p["text_layers"] + p["lm_head"]) * text_tokens
    text += 12 * s["layers"] * s["heads"] * s["head_dim"] * text_tokens * text_tokens
    if image_patches <= 0:
        return float(text)
    window = min(image_patches, (s["v_window"] // s["v_patch"]) ** 2)
    windowed = s["v_depth"] - s["v_full_layers"]
    vision = 6 * p["vision_blocks"] * image_patches + 6 * p["vision_merger"] * image_patches / s["v_merge"] ** 2
    vision += 12 * s["v_hidden"] * image_patches * (windowed * window + s["v_full_layers"] * image_patches)
    return float(text + vision)
