"""The transformers backend: left-padded batches through ``generate`` on one device, greedy."""

from __future__ import annotations

import copy
from collections.abc import Sequence


class HFBackend:
    def __init__(self, settings: dict, gpus: list[int] | None):
        import torch

        from spatialreasoner.modeling import load_model, load_processor, resolve_attn_implementation

        device = f"cuda:{gpus[0]}" if gpus else "cpu"
        self.device = device
        self.processor = load_processor(settings["model"], settings.get("min_pixels"), settings.get("max_pixels"))
        # Batched generation needs the prompt's end aligned at the right edge.
        self.processor.tokenizer.padding_side = "left"
        dtype = settings.get("dtype", "auto")
        if dtype == "auto":
            dtype = "bfloat16" if gpus else "float32"
        attn = resolve_attn_implementation(settings.get("attn_implementation", "auto"))
        if not gpus and attn == "flash_attention_2":
            attn = "sdpa"
        # On a GPU the weights load straight onto it (no full copy in host memory per worker).
        placement = {"device_map": device} if gpus else {}
        self.model = load_model(settings["model"], dtype=dtype, attn_implementation=attn, **placement)
        self.model = self.model.to(device).eval()
        if not gpus and settings.get("threads"):
            torch.set_num_threads(settings["threads"])
        self.generation_config = greedy_config(self.model.generation_config, settings["max_new_tokens"])

    def generate(self, prompts: Sequence[str], images: Sequence) -> list[list[int]]:
        import torch

        inputs = self.processor(text=list(prompts), images=list(images), padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        return out[:, inputs["input_ids"].shape[1] :].cpu().tolist()


def greedy_config(generation_config, max_new_tokens: int):
    """Greedy decoding: no sampling knobs and no repetition penalty from the checkpoint's generation_config."""
    config = copy.deepcopy(generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.repetition_penalty = None
    config.max_new_tokens = max_new_tokens
    return config
