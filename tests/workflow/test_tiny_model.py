"""The tiny Qwen2.5-VL loads through the Auto classes the 7B model uses and generates from an image + question."""

import json

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from spatialreasoner.modeling import check_model_dir
from spatialreasoner.prompts import format_question
from spatialreasoner.tiny_model import SPECIAL_TOKENS, build_tiny_model


def test_folder_is_a_complete_hf_model(tiny_model_dir):
    check_model_dir(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert (tiny_model_dir / "chat_template.jinja").is_file()
    meta = json.loads((tiny_model_dir / "tiny_model.json").read_text())
    assert 100_000 <= meta["parameters"] <= 5_000_000


def test_token_ids_match_the_tokenizer(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = processor.tokenizer
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"
    for special in SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, f"{special} is split into {ids}"
    assert cfg.text_config.vocab_size >= len(tok)
    assert tok.tokenize("<think>x</think><answer>B</answer>")[:1] == ["<think>"]


def test_generate_from_image_and_question(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    image = Image.new("RGB", (112, 112), (200, 40, 40))
    text = format_question("Is the red cube closer to the camera than the blue sphere?", {"A": "yes", "B": "no"})
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == 16  # 112x112 -> 8x8 patches of 14 -> 2x2 merge -> 16 tokens
    out = model.generate(**inputs, do_sample=False, max_new_tokens=8)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 8
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)


def test_same_seed_same_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    read = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)
