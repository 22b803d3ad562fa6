"""The vLLM backend: the offline engine (``vllm.LLM``) on the worker's GPUs (tensor parallel over them) or the CPU.

The prompts are the shared ones (the chat template applied by the model's own processor); the pixel limits reach
vLLM's image processor as ``mm_processor_kwargs``; decoding is greedy with the same token limit and stop ids, and
nothing from the folder's ``generation_config.json`` (repetition penalty, sampling) is applied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from spatialreasoner.evaluate.backends import cuda_visible_devices, stop_token_ids

log = logging.getLogger(__name__)


def engine_kwargs(settings: dict, on_cpu: bool) -> dict:
    """Keyword arguments of ``vllm.LLM`` for these inference settings."""
    dtype = settings.get("dtype", "auto")
    if dtype == "auto":
        dtype = "float32" if on_cpu else "bfloat16"
    limits = {k: int(settings[k]) for k in ("min_pixels", "max_pixels") if settings.get(k) is not None}
    tensor_parallel = int(settings.get("tensor_parallel_size") or 1)
    if on_cpu and tensor_parallel > 1:
        from spatialreasoner.errors import ConfigError

        # vLLM's CPU engine would stop with an assertion about NUMA nodes, after loading the model.
        raise ConfigError(
            f"evaluate.vllm.tensor_parallel_size: {tensor_parallel} on a machine without a GPU; vLLM's CPU engine "
            "runs one process per NUMA node, so expected tensor_parallel_size 1 on CPU"
        )
    kwargs = {
        "model": str(settings["model"]),
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel,
        "gpu_memory_utilization": float(settings.get("gpu_memory_utilization") or 0.9),
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        # Sampling defaults come from the request alone, as in the transformers backend.
        "generation_config": "vllm",
        # CUDA graphs pay off on GPUs; on the CPU eager mode starts in seconds instead of compiling.
        "enforce_eager": on_cpu,
        "seed": 0,
    }
    if settings.get("max_model_len"):
        kwargs["max_model_len"] = int(settings["max_model_len"])
    if limits:
        kwargs["mm_processor_kwargs"] = limits
    return kwargs


class VLLMBackend:
    def __init__(self, settings: dict, gpus: list[int] | None):
        if gpus is not None:
            # vLLM places its engine on the first visible GPUs: show it this worker's.
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(gpus)
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # One process: a separate engine process would import torch and vLLM again (tens of seconds on a CPU).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = engine_kwargs(settings, current_platform.is_cpu())
        log.info("starting vLLM %s", {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**kwargs)
        tokenizer = AutoTokenizer.from_pretrained(settings["model"])
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=int(settings["max_new_tokens"]),
            stop_token_ids=sorted(stop_token_ids(settings["model"], tokenizer)),
            repetition_penalty=1.0,
            detokenize=False,  # the shared code decodes the ids as the transformers backend does
        )

    def generate(self, prompts: Sequence[str], images: Sequence) -> list[list[int]]:
        requests = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images, strict=True)]
        outputs = self.llm.generate(requests, self.params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]
