"""gpu-check stage: GRPO steps with the project's GRPO trainer (TRL ``GRPOTrainer``) at the recipe's shapes.

Generation by transformers ``generate`` or by vLLM colocated in the training process. Every step's time is split
into generation (sampling the completions, and in vLLM's case the weight sync), scoring (rewards and the reference
log-probabilities) and the update (forward, backward and optimizer step).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spatialreasoner.gpucheck.common import (
    Deadline,
    finish,
    finite,
    peak_memory,
    reset_peak_memory,
    step_timer_callback,
    synchronize,
)

log = logging.getLogger(__name__)

#: GRPOTrainer methods timed, outermost first: the whole generation phase of a step, then sampling alone (the
#: first name that exists in the installed TRL is used).
PHASE_METHOD = "_generate_and_score_completions"
GENERATE_METHODS = ("_generate_single_turn", "_generate")


def timed_method(obj, name: str, into: list[float]) -> bool:
    """Replace ``obj.name`` by a wrapper appending each call's synchronised wall time to ``into``."""
    inner = getattr(obj, name, None)
    if inner is None:
        return False

    def wrapper(*args, **kwargs):
        synchronize()
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            synchronize()
            into.append(time.perf_counter() - t0)

    setattr(obj, name, wrapper)
    return True


def split_times(step_times: list[float], phase: list[float], generate: list[float], warmup: int) -> dict:
    """Mean seconds per step of generation, scoring and update over the steps after the warm-up ones."""
    n = min(len(step_times), len(phase))
    skip = warmup if n > warmup else 0
    steps = list(range(skip, n))
    if not steps:
        return {"measured_steps": 0}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    gen = mean([generate[i] for i in steps]) if len(generate) >= n else None
    phase_mean = mean([phase[i] for i in steps])
    return {
        "measured_steps": len(steps),
        "seconds_per_step": round(mean([step_times[i] for i in steps]), 4),
        "generation_seconds": round(gen if gen is not None else phase_mean, 4),
        "scoring_seconds": round(phase_mean - gen, 4) if gen is not None else None,
        "update_seconds": round(mean([step_times[i] - phase[i] for i in steps]), 4),
    }


def run_grpo(spec: dict) -> dict:
    from spatialreasoner.gpucheck.data import rl_table
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train import grpo
    from spatialreasoner.train.common import resolve_run_config, training_kwargs

    deadline = Deadline(spec["cap"])
    work, model_dir = Path(spec["workdir"]), Path(spec["model_dir"])
    use_vllm = spec["generation"] == "vllm"
    recipe = {k: v for k, v in spec["recipe"].items() if k not in ("vllm", "vllm_gpu_memory_utilization")}
    trainer_args = {}
    if use_vllm:
        trainer_args = {"vllm_max_model_length": int(spec["vllm_max_model_length"])}
    cfg = resolve_run_config(
        {
            **recipe,
            "stage": "grpo",
            "attn_implementation": spec.get("attn", "auto"),
            "precision": "auto",
            "gradient_checkpointing": True,
            "report_to": [],
            "wandb": None,
            "log_completions": False,
            # The recipe's vLLM settings (importance-sampling correction...), colocated in this one process.
            "vllm": {
                **{k: v for k, v in (spec["recipe"].get("vllm") or {}).items() if k != "server_gpus"},
                "mode": "colocate" if use_vllm else None,
                "gpu_memory_utilization": float(spec.get("vllm_gpu_memory_utilization", 0.25)),
            },
            "trainer_args": trainer_args,
        }
    )  # fmt: skip
    steps = int(spec["steps"])
    per_step = int(cfg["per_device_train_batch_size"])
    processor = load_processor(model_dir, spec["min_pixels"], spec["max_pixels"])
    table = rl_table(work / "data", rows=max(per_step // int(cfg["num_generations"]), 1) * (steps + 1),
                     image_side=spec["image_side"])  # fmt: skip
    kwargs = training_kwargs(
        cfg, work / "trainer", max_steps=steps, seed=int(spec.get("seed", 0)), run_name="gpu-check"
    )
    kwargs |= {"save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_steps": 1}
    timer = step_timer_callback(deadline, steps)
    prompts = {"system": spec["system_prompt"]}
    log.info("GRPO: %d completions per step, %d steps, generation by %s", per_step, steps, spec["generation"])
    t_init = time.perf_counter()
    trainer = grpo.build_trainer(cfg, kwargs, model_dir, Path(table), processor, [timer], prompts, num_processes=1)
    init_seconds = time.perf_counter() - t_init
    phase, generate = [], []
    timed_method(trainer, PHASE_METHOD, phase)
    generate_method = next((m for m in GENERATE_METHODS if timed_method(trainer, m, generate)), None)
    log.info("trainer ready after %.1f s; training", init_seconds)
    reset_peak_memory()
    trainer.train()
    if not timer.times:
        raise RuntimeError("no GRPO step finished before the stage's time cap")
    logs = [e for e in trainer.state.log_history if "loss" in e]
    losses = [float(e["loss"]) for e in logs]
    lengths = [float(e["completions/mean_length"]) for e in logs if "completions/mean_length" in e]
    rewards = [float(e["reward"]) for e in logs if "reward" in e]
    split = split_times(timer.times, phase, generate, int(spec.get("warmup_steps", 1)))
    completions = per_step  # one generation batch per step (steps_per_generation = gradient accumulation = 1)
    result = {
        "model": spec["model"],
        "generation": "vllm-colocate" if use_vllm else "transformers",
        "attn": trainer.model.config._attn_implementation,
        "dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
        "completions_per_step": completions,
        "num_generations": int(cfg["num_generations"]),
        "max_completion_length": int(cfg["max_completion_length"]),
        "steps": trainer.state.global_step,
        "step_times": [round(t, 4) for t in timer.times],
        "phase_times": [round(t, 4) for t in phase],
        "generate_times": [round(t, 4) for t in generate],
        "generate_method": generate_method,
        "stopped_by_time_cap": timer.stopped_by_deadline,
        "init_seconds": round(init_seconds, 2),
        "losses": losses,
        "loss_finite": finite(losses),
        "rewards": rewards,
        "mean_completion_tokens": round(sum(lengths) / len(lengths), 1) if lengths else None,
        **split,
        **peak_memory(),
    }
    if result.get("generation_seconds") and lengths:
        result["completions_per_second"] = round(completions / result["generation_seconds"], 3)
        result["generated_tokens_per_second"] = round(completions * result["mean_completion_tokens"]
                                                      / result["generation_seconds"], 1)  # fmt: skip
    if not result["loss_finite"]:
        raise FloatingPointError(f"non-finite GRPO loss {losses[:3]} after {trainer.state.global_step} steps")
    return result


if __name__ == "__main__":
    finish(run_grpo)
