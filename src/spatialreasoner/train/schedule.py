"""The official learning-rate schedule: an early stop (``stop_steps``) inside a longer warmup + cosine schedule.

The paper's runs planned ``num_train_epochs`` (10 SFT, 100 GRPO) and stopped at a fixed step, so the learning rate at
step k is that of the full schedule. We give the Trainer the full schedule's step count and stop it with a callback.
"""

from __future__ import annotations

import math

from spatialreasoner.errors import ConfigError


def full_schedule_steps(
    num_rows: int,
    per_device_batch: int,
    num_processes: int,
    epochs: float,
    grad_accum: int = 1,
    num_generations: int = 1,
) -> int:
    """Optimizer steps of the official full schedule, counted as the Trainer of the official runs counted them.

    Each process iterates ``ceil(ceil(samples / per_device_batch) / num_processes)`` batches per epoch (accelerate's
    even sharding), where a GRPO sample is one completion, so ``samples = rows * num_generations``; one optimizer
    step takes ``grad_accum`` batches (at least one step per epoch). E.g. GRPO with 12 completions per device on 3
    processes and 4 generations makes ``rows / 9`` steps per epoch: 9 prompts x 4 completions = 36 per step.
    """
    for name, value in (
        ("num_rows", num_rows),
        ("per_device_batch", per_device_batch),
        ("num_processes", num_processes),
        ("grad_accum", grad_accum),
        ("num_generations", num_generations),
    ):
        if int(value) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if epochs <= 0:
        raise ConfigError(f"num_train_epochs must be positive, got {epochs!r}")
    samples = num_rows * num_generations
    batches_per_process = math.ceil(math.ceil(samples / per_device_batch) / num_processes)
    steps_per_epoch = max(batches_per_process // grad_accum, 1)
    return math.ceil(epochs * steps_per_epoch)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Linear warmup length: ``ceil(total_steps * warmup_ratio)`` (the Trainer's rule for a ratio)."""
    return math.ceil(total_steps * warmup_ratio)


def official_lr(step: int, base_lr: float, total_steps: int, warmup_ratio: float, scheduler: str = "cosine") -> float:
    """Learning rate applied by optimizer step ``step`` (1-based) of the full schedule.

    Linear warmup from 0 over ``warmup_steps``, then half a cosine (``cosine``), a straight line (``linear``) or a
    constant (``constant_with_warmup``) down to 0 at ``total_steps``. Written out here, independently of
    transformers, so that tests can compare the Trainer's schedule with the formula.
    """
    s = step - 1  # the scheduler has been stepped s times before optimizer step `step`
    warm = warmup_steps(total_steps, warmup_ratio)
    if s < warm:
        return base_lr * s / max(1, warm)
    progress = (s - warm) / max(1, total_steps - warm)
    if scheduler == "cosine":
        return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if scheduler == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    if scheduler == "constant_with_warmup":
        return base_lr
    raise ConfigError(f"lr_scheduler_type {scheduler!r} is not supported; use cosine, linear or constant_with_warmup")


def batch_layout(per_device_batch: int, num_processes: int, grad_accum: int, total_steps: int) -> dict:
    """How a run splits its global batch, recorded next to its checkpoints: resuming needs the same samples per
    optimizer step and the same full schedule, not the same process count."""
    return {
        "num_processes": int(num_processes),
        "per_device_train_batch_size": int(per_device_batch),
        "gradient_accumulation_steps": int(grad_accum),
        "samples_per_step": int(per_device_batch) * int(num_processes) * int(grad_accum),
        "full_schedule_steps": int(total_steps),
    }


def resume_conflict(before: dict, now: dict) -> str | None:
    """Why a checkpoint made with layout ``before`` cannot continue with layout ``now`` (None when it can)."""
    keys = ("samples_per_step", "full_schedule_steps")
    if all(before.get(k) == now.get(k) for k in keys):
        return None

    def describe(x: dict) -> str:
        return (
            f"{x.get('num_processes')} process(es) x {x.get('per_device_train_batch_size')} per process x "
            f"{x.get('gradient_accumulation_steps')} accumulation = {x.get('samples_per_step')} samples per step, "
            f"a {x.get('full_schedule_steps')}-step schedule"
        )

    return f"it was trained with {describe(before)}; this job has {describe(now)}"
