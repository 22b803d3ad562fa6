"""gpu-check stage: SFT steps with the project's SFT trainer (TRL ``SFTTrainer``) at the recipe's batch and length.

Run as one plain process, or under ``accelerate launch`` with the workflow's DeepSpeed ZeRO-3 file; gradient
checkpointing on, bf16 on CUDA. Reports samples/s, tokens/s, model FLOPs utilisation, peak memory and the losses.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from spatialreasoner.gpucheck.common import (
    Deadline,
    finish,
    finite,
    measured,
    model_config,
    peak_memory,
    reset_peak_memory,
    step_timer_callback,
)

log = logging.getLogger(__name__)


class BatchCounter:
    """Counts the tokens (attention mask) and image patches of every batch a collator makes."""

    def __init__(self, collator):
        self.tokens: list[list[int]] = []
        self.patches: list[list[int]] = []
        inner = collator.torch_call

        def counted(examples):
            out = inner(examples)
            self.tokens.append([int(n) for n in out["attention_mask"].sum(dim=1).tolist()])
            grid = out.get("image_grid_thw")
            self.patches.append([int(g[0] * g[1] * g[2]) for g in grid.tolist()] if grid is not None else [])
            return out

        collator.torch_call = counted

    def per_batch(self) -> tuple[float, float, float]:
        """Mean samples, tokens and image patches per batch."""
        n = max(len(self.tokens), 1)
        return (
            sum(len(t) for t in self.tokens) / n,
            sum(sum(t) for t in self.tokens) / n,
            sum(sum(p) for p in self.patches) / n,
        )


def step_flops(config: dict, counter: BatchCounter) -> float:
    """Mean model FLOPs of one optimizer step over the batches seen (one image per sample)."""
    from spatialreasoner.gpucheck.architectures import training_flops

    total = 0.0
    for tokens, patches in zip(counter.tokens, counter.patches, strict=True):
        for i, t in enumerate(tokens):
            total += training_flops(config, t, patches[i] if i < len(patches) else 0)
    return total / max(len(counter.tokens), 1)


def throughput(times, warmup, counter, config, peak_tflops, grad_accum: int = 1) -> dict:
    """samples/s, tokens/s, achieved TFLOP/s and MFU over the measured (post-warm-up) steps."""
    steps, seconds = measured(times, warmup)
    samples, tokens, _ = counter.per_batch()
    flops = step_flops(config, counter) * grad_accum
    out = {
        "measured_steps": steps,
        "seconds_per_step": round(seconds / steps, 4) if steps else None,
        "samples_per_second": round(samples * grad_accum * steps / seconds, 3) if seconds else None,
        "tokens_per_second": round(tokens * grad_accum * steps / seconds, 1) if seconds else None,
        "tokens_per_sample": round(tokens / max(samples, 1), 1),
        "model_tflops_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(flops * steps / seconds / 1e12, 4) if seconds else None,
    }
    out["mfu"] = round(out["achieved_tflops"] / peak_tflops, 4) if peak_tflops and out["achieved_tflops"] else None
    return out


def losses_of(trainer) -> list[float]:
    return [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]


def run_sft(spec: dict) -> dict:
    from spatialreasoner.gpucheck.data import sft_table
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train import sft
    from spatialreasoner.train.common import resolve_run_config, training_kwargs

    deadline = Deadline(spec["cap"])
    work, model_dir = Path(spec["workdir"]), Path(spec["model_dir"])
    cfg = resolve_run_config(
        {
            **spec["recipe"],
            "stage": "sft",
            "attn_implementation": spec["attn"],
            "precision": "auto",
            "gradient_checkpointing": True,
            "report_to": [],
            "wandb": None,
            "trainer_args": {},
        }
    )
    steps, batch = int(spec["steps"]), int(cfg["per_device_train_batch_size"])
    processor = load_processor(model_dir, spec["min_pixels"], spec["max_pixels"])
    data = sft_table(work / "data", processor, rows=batch * 2, image_side=spec["image_side"],
                     target_tokens=int(cfg["max_length"]))  # fmt: skip
    kwargs = training_kwargs(
        cfg, work / "trainer", max_steps=steps, seed=int(spec.get("seed", 0)), run_name="gpu-check"
    )
    kwargs |= {"save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_steps": 1}
    log.info(
        "SFT data: %d rows of %d tokens (%d image tokens each)", batch * 2, cfg["max_length"], data["image_tokens"]
    )
    timer = step_timer_callback(deadline, steps)
    trainer = sft.build_trainer(cfg, kwargs, model_dir, Path(data["table"]), processor, [timer])
    if hasattr(trainer, "chat_template"):
        trainer.data_collator.chat_template = trainer.chat_template
    counter = BatchCounter(trainer.data_collator)
    log.info("trainer ready; training %d steps (attn %s)", steps, cfg["attn_implementation"])
    reset_peak_memory()
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    losses = losses_of(trainer)
    if not timer.times:
        raise RuntimeError("no optimizer step finished before the stage's time cap")
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    # The stage DeepSpeed's engine actually ran (not the one asked for), and how many processes shared it.
    engine = trainer.model_wrapped if hasattr(trainer.model_wrapped, "zero_optimization_stage") else None
    result = {
        "model": spec["model"],
        "attn": trainer.model.config._attn_implementation,
        "deepspeed_zero_stage": int(engine.zero_optimization_stage()) if engine is not None else None,
        "deepspeed_zero_stage_requested": plugin.zero_stage if plugin is not None else None,
        "processes": trainer.accelerator.num_processes,
        "dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "batch": batch,
        "max_length": cfg["max_length"],
        "steps": trainer.state.global_step,
        "step_times": [round(t, 4) for t in timer.times],
        "stopped_by_time_cap": timer.stopped_by_deadline,
        "train_seconds": round(train_seconds, 2),
        "image_tokens": data["image_tokens"],
        "vocab_size": int(trainer.model.config.get_text_config().vocab_size),
        "losses": losses,
        "loss_finite": finite(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        **throughput(
            timer.times, int(spec.get("warmup_steps", 2)), counter, model_config(model_dir), spec.get("peak_tflops")
        ),  # fmt: skip
        **peak_memory(),
    }
    if not result["loss_finite"]:
        bad = [v for v in losses if not math.isfinite(v)]
        raise FloatingPointError(f"non-finite SFT loss {bad[:3]} after {trainer.state.global_step} steps")
    return result


if __name__ == "__main__":
    finish(run_sft)
