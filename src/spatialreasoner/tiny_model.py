"""A tiny randomly initialised Qwen2.5-VL, saved as an ordinary Hugging Face model folder.

The demo and the tests train and evaluate it on CPU through exactly the code paths the 7B model uses
(``AutoModelForImageTextToText``, ``AutoProcessor``): same architecture class, same chat template, same special tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
from importlib.resources import files
from pathlib import Path

from spatialreasoner.modeling import with_weight_hashes
from spatialreasoner.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

# Qwen2.5-VL's added special tokens, in its own order (ids follow the BPE vocabulary here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Tags the reasoning format uses; whole tokens make the format easy for a tiny model to learn.
EXTRA_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen2's pre-tokenizer pattern (split before byte-level BPE).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Head dimensions of 64 (text) and 64 (vision): vLLM's CPU attention rejects head dimensions below 32.
DEFAULTS = {
    "vocab_size": 640,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vision_depth": 2,
    "vision_hidden_size": 64,
    "vision_num_heads": 1,
    "min_pixels": 28 * 28 * 4,
    "max_pixels": 28 * 28 * 25,
}


def _training_corpus() -> list[str]:
    """Text like the prompts and answers the model will see, so BPE merges are useful ones."""
    shapes = ["cube", "sphere", "cone", "cylinder", "pyramid", "car", "chair", "person", "table", "bus"]
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "cyan"]
    lines = []
    for i, shape in enumerate(shapes):
        c1, c2 = colors[i], colors[(i + 3) % len(colors)]
        other = shapes[(i + 4) % len(shapes)]
        lines += [
            f"Question: Is the {c1} {shape} closer to the camera than the {c2} {other}?",
            "Options:\nA. yes\nB. no\nC. left\nD. right",
            "Please select the correct answer from the options above.",
            f"<think>The 3D location of the {c1} {shape} is (1.2, -0.4, 5.6). The 3D location of the {c2} {other} is "
            f"(-0.8, 0.3, 7.1). The front direction of the {c1} {shape} is (0.0, 0.0, -1.0). The left direction of "
            f"the {c1} {shape} is (1.0, 0.0, 0.0). The vector from the {c1} {shape} to the {c2} {other} is "
            f"(-2.0, 0.7, 1.5). The distance from the {c1} {shape} to the camera is 5.74. The distance between the "
            f"{c1} {shape} and the {c2} {other} is 2.60. The cosine similarity between the vectors is -0.58, so the "
            f"angle between them is 125 degrees. Therefore, the answer is A.</think>\n<answer>A</answer>",
            "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
            "The assistant first thinks about the reasoning process in the mind and then provides the user with "
            "the answer.",
            f"Which object is higher in 3D world space, the {c1} {shape} or the {c2} {other}? above below "
            "in front of behind facing parallel same direction viewpoint towards next to depth distance",
            "0 1 2 3 4 5 6 7 8 9 10 0.5 -1.25 3.75 100 45 90 180",
        ]
    return lines * 4


def build_tokenizer():
    """Byte-level BPE trained here, wrapped as a ``Qwen2Tokenizer`` with Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEFAULTS["vocab_size"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    vocab = bpe.get_vocab()
    # Qwen2Tokenizer wants merges as pairs; the serialised model may hold "a b" strings or [a, b] lists.
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    tokenizer.model_max_length = 32768
    return tokenizer


def chat_template() -> str:
    """Qwen2.5-VL's chat template as shipped with TRL (TRL recognises it for assistant-only loss)."""
    return files("trl").joinpath("chat_templates/qwen2_5_vl.jinja").read_text()


def build_processor(tokenizer, min_pixels: int, max_pixels: int):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    tokenizer.chat_template = chat_template()
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(),
    )


def build_config(tokenizer, sizes: dict):
    from transformers import Qwen2_5_VLConfig

    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    half = head_dim // 2
    # mrope splits head_dim/2 rotary frequencies between temporal, height and width positions.
    mrope_section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    vocab = ((len(tokenizer) + 63) // 64) * 64
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _TOKEN_IDS.items()}
    text_config = {
        "vocab_size": vocab,
        "hidden_size": sizes["hidden_size"],
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": sizes["num_attention_heads"],
        "num_key_value_heads": sizes["num_key_value_heads"],
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
        "tie_word_embeddings": True,
        "bos_token_id": ids["eos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    vision_config = {
        "depth": sizes["vision_depth"],
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": 2 * sizes["vision_hidden_size"],
        "num_heads": sizes["vision_num_heads"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [sizes["vision_depth"] - 1],
        "out_hidden_size": sizes["hidden_size"],
        "in_channels": 3,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        tie_word_embeddings=True,
    )


_TOKEN_IDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "eos_token_id": "<|im_end|>",
    "pad_token_id": "<|endoftext|>",
}


def build_tiny_model(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Build the tokenizer, processor and a randomly initialised model; save them atomically to ``out_dir``."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        from spatialreasoner.errors import ConfigError

        raise ConfigError(f"unknown tiny-model setting(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    sizes = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, sizes["min_pixels"], sizes["max_pixels"])
    config = build_config(tokenizer, sizes)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _TOKEN_IDS.items()}
    model.generation_config = GenerationConfig(
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        do_sample=False,
    )
    n_params = sum(p.numel() for p in model.parameters())
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        record = {"seed": seed, "parameters": n_params, **sizes}
        write_json_atomic(tmp / "tiny_model.json", with_weight_hashes(record, tmp))
    log.info("built tiny Qwen2.5-VL with %d parameters (vocab %d) in %s", n_params, len(tokenizer), out_dir)
    return out_dir


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, dest=key)


def run(args: argparse.Namespace) -> None:
    overrides = {k: getattr(args, k) for k in DEFAULTS}
    build_tiny_model(args.out, seed=args.seed, **overrides)
