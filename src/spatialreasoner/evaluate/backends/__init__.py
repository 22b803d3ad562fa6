"""Generation backends of inference behind one interface: prompt texts and images in, generated token ids out.

A backend is built from the run's settings and the GPUs of its worker (``None`` on CPU) and has one method,
``generate(prompts, images) -> list[list[int]]``: the greedy continuation of every prompt (the chat template already
applied, one image placeholder each). Rows, prompts, shards, workers and the export are shared, outside the backends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from spatialreasoner.errors import ConfigError

BACKENDS = ("hf", "vllm")


class Backend(Protocol):
    def generate(self, prompts: Sequence[str], images: Sequence) -> list[list[int]]: ...


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"evaluate.backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def open_backend(name: str, settings: dict, gpus: list[int] | None) -> Backend:
    """The backend ``name`` with its model loaded on ``gpus`` (indices among the visible GPUs; None: the CPU)."""
    if check_backend(name) == "vllm":
        from spatialreasoner.evaluate.backends.vllm import VLLMBackend

        return VLLMBackend(settings, gpus)
    from spatialreasoner.evaluate.backends.hf import HFBackend

    return HFBackend(settings, gpus)


def gpus_per_worker(name: str, settings: dict) -> int:
    """GPUs one worker uses: vLLM's tensor-parallel size, else one."""
    return int(settings.get("tensor_parallel_size") or 1) if name == "vllm" else 1


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_gpus(rank: int, per_worker: int) -> list[int] | None:
    """The GPUs of data-parallel worker ``rank`` (consecutive groups of ``per_worker``); None without GPUs."""
    n = visible_gpus()
    if n == 0:
        return None
    if per_worker > n:
        raise ConfigError(f"evaluate.vllm.tensor_parallel_size={per_worker} is more than the job's {n} GPU(s)")
    first = (rank * per_worker) % n
    return list(range(first, first + per_worker))


def default_workers(per_worker: int = 1) -> int:
    """One worker per group of ``per_worker`` visible GPUs; one on CPU."""
    n = visible_gpus()
    return max(1, n // per_worker) if n else 1


def cuda_visible_devices(gpus: Sequence[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` selecting ``gpus`` (indices among the devices visible now, e.g. SLURM's)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",")] if visible else [str(i) for i in range(max(gpus) + 1)]
    return ",".join(ids[i] for i in gpus)


def stop_token_ids(model: str | Path, tokenizer) -> set[int]:
    """Ids that end a reply: the model folder's end-of-turn ids (``generation_config.json``, else its config) and
    the padding id. Both backends cut their output at the first of them."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model)
    except OSError:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))
    eos = config.eos_token_id
    ids = set(eos if isinstance(eos, list | tuple) else [eos])
    ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {int(i) for i in ids if i is not None}
