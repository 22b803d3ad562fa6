"""GRPO on the canonical RL table with TRL's GRPOTrainer: system prompt + image + question, configured rewards.

Every table column reaches the rewards as a keyword argument (``answer``, ``A``-``D``, ``category``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.prompts import format_question, present_options
from spatialreasoner.train.common import image_path

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Please select the correct answer from the options above."

#: Columns each built-in reward reads; checked against the table before training starts.
REWARD_COLUMNS = {"accuracy": ("answer",), "process": ("category",)}


def question_text(row: Mapping, instruction: str | None = None) -> str:
    """The user text of the official prompt; ``instruction`` replaces its last line (an ablation's wording)."""
    text = format_question(row["question"], present_options(row))
    if instruction:
        text = text.removesuffix(DEFAULT_INSTRUCTION) + instruction
    return text


def grpo_prompt(row: Mapping, system: str | None, instruction: str | None = None) -> list[dict]:
    """Chat messages of one prompt; TRL inserts the row's image before the user text, as the official prompt has it."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question_text(row, instruction)})
    return messages


def prompt_texts(cfg: Mapping, prompts: Mapping) -> tuple[str | None, str | None]:
    """The system prompt and the instruction override named by the run (keys of the config's ``prompts``)."""
    out = []
    for key in ("system_prompt", "instruction"):
        name = cfg.get(key)
        if name is None:
            out.append(None)
        elif name not in prompts:
            raise ConfigError(f"runs.<run>.{key} names prompts.{name}, which is not in the config's prompts")
        else:
            out.append(str(prompts[name]))
    return out[0], out[1]


def build_grpo_dataset(table: str | Path, system: str | None, instruction: str | None, rewards=()):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    from spatialreasoner.train.common import read_table

    table = Path(table)
    needed = {"question", "image"} | {c for r in rewards for c in REWARD_COLUMNS.get(r, ())}
    df = read_table(table, required=tuple(sorted(needed)))
    records = df.to_dict("records")
    for row in records:
        # Missing cells are NaN floats in pandas; Arrow needs one type per column (e.g. an absent option D).
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = None
        row["image"] = image_path(row, table)
        row["prompt"] = grpo_prompt(row, system, instruction)
    dataset = Dataset.from_list(records)
    # Decoded lazily, row by row; the processor applies the run's pixel limits.
    dataset = dataset.cast_column("image", ImageFeature())
    log.info("RL table %s: %d prompts", table, len(dataset))
    return dataset


def build_trainer(
    cfg: Mapping,
    args_kwargs: dict,
    init: Path,
    table: Path,
    processor,
    callbacks,
    prompts: Mapping,
    num_processes: int,
):
    from trl import GRPOConfig, GRPOTrainer

    from spatialreasoner.modeling import load_model, resolve_attn_implementation
    from spatialreasoner.train.common import model_dtype
    from spatialreasoner.train.resume import CheckedResumeMixin
    from spatialreasoner.train.rewards import resolve_rewards

    class ResumingGRPOTrainer(CheckedResumeMixin, GRPOTrainer):
        """GRPOTrainer whose resume restores the checkpoint's weights (checked key by key)."""

    reward_funcs = resolve_rewards(cfg["rewards"])
    completions_per_step = cfg["per_device_train_batch_size"] * num_processes * cfg["gradient_accumulation_steps"]
    if completions_per_step % cfg["num_generations"]:
        raise ConfigError(
            f"runs.<run>: {completions_per_step} completions per step (per_device_train_batch_size x processes x "
            f"gradient_accumulation_steps) is not a multiple of num_generations={cfg['num_generations']}"
        )
    vllm = cfg["vllm"]
    grpo_kwargs = {
        "num_generations": int(cfg["num_generations"]),
        "max_completion_length": int(cfg["max_completion_length"]),
        "beta": float(cfg["beta"]),
        "temperature": float(cfg["temperature"]),
        "loss_type": cfg["loss_type"],
        "scale_rewards": cfg["scale_rewards"],
        "reward_weights": cfg["reward_weights"],
        "remove_unused_columns": False,  # the rewards need the answer, options and category columns
        "log_completions": bool(cfg["log_completions"]),
        "use_vllm": vllm["mode"] is not None,
        "vllm_importance_sampling_correction": bool(vllm["importance_sampling_correction"]),
    }
    logprob_temperature = cfg["logprob_temperature"]
    if (
        logprob_temperature is not None
        and float(logprob_temperature) != float(cfg["temperature"])
        and vllm["mode"] is not None
        and vllm["importance_sampling_correction"]
    ):
        # vLLM returns log-probs at the sampling temperature; a ratio against other log-probs is biased.
        raise ConfigError(
            f"runs.<run>.logprob_temperature={logprob_temperature} differs from temperature={cfg['temperature']}, "
            "which biases vLLM's importance-sampling correction; set vllm.importance_sampling_correction: false "
            "(as the official trainer, which had none) or logprob_temperature: null"
        )
    if vllm["mode"] is not None:
        if vllm["mode"] not in ("colocate", "server"):
            raise ConfigError(f"runs.<run>.vllm.mode must be colocate, server or null, got {vllm['mode']!r}")
        grpo_kwargs["vllm_mode"] = vllm["mode"]
        grpo_kwargs["vllm_gpu_memory_utilization"] = float(vllm["gpu_memory_utilization"])
    args = GRPOConfig(**{**grpo_kwargs, **args_kwargs})
    system, instruction = prompt_texts(cfg, prompts)
    dataset = build_grpo_dataset(table, system, instruction, rewards=cfg["rewards"])
    if len(dataset) * cfg["num_generations"] < completions_per_step:
        raise DataError(
            f"{table}: {len(dataset)} prompts cannot fill one step of {completions_per_step // cfg['num_generations']}"
            " prompts"
        )
    model = load_model(
        init, dtype=model_dtype(cfg), attn_implementation=resolve_attn_implementation(cfg["attn_implementation"])
    )
    # GRPOTrainer left-pads prompts; the processor must pad the same side, or its multimodal token types (which
    # place the image tokens for Qwen2.5-VL's 3D positions) are shifted against the ids of shorter prompts.
    processor.tokenizer.padding_side = "left"
    engine = contextlib.nullcontext()
    if vllm["mode"] == "colocate":
        from spatialreasoner.train.vllm_colocate import (
            colocated_engine_arguments,
            engine_pixel_limits,
            single_process_rendezvous,
        )

        single_process_rendezvous()
        # The engine sees the images as the trainer's processor does (the run's pixel limits), one per prompt, and
        # computes in the training dtype (vLLM's "auto" would run a float32 model in bfloat16 on a CPU).
        engine = colocated_engine_arguments(
            mm_processor_kwargs=engine_pixel_limits(processor),
            limit_mm_per_prompt={"image": 1, "video": 0},
            dtype=model_dtype(cfg),
        )
    with engine:
        trainer = ResumingGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            callbacks=callbacks,
        )
    if logprob_temperature is not None:
        set_logprob_temperature(trainer, float(logprob_temperature))
    if vllm["mode"] == "colocate":
        from spatialreasoner.train.vllm_colocate import feed_unexpanded_image_prompts, use_reload_for_colocated_sync

        use_reload_for_colocated_sync(trainer)
        feed_unexpanded_image_prompts(trainer)
    elif vllm["mode"] == "server":
        from spatialreasoner.train.vllm_server import clear_encoder_cache_after_sync

        clear_encoder_cache_after_sync(trainer)
    return trainer


def set_logprob_temperature(trainer, temperature: float) -> None:
    """Compute the policy's (and reference model's) training log-probabilities at ``temperature``.

    TRL 1.16 divides the logits by the sampling temperature inside the fused LM head it adds to the model at
    construction, and has no setting for another value; the official trainer scored completions with the raw logits
    (temperature 1) while sampling at 0.9. Generation keeps the sampling temperature: only the head is replaced,
    by TRL's own ``add_fused_lm_head`` on the model's unpatched forward.
    """
    from trl.trainer.utils import add_fused_lm_head

    for model, outputs in ((trainer.model, ("log_probs", "entropy")), (trainer.ref_model, ("log_probs",))):
        if model is None:
            continue
        if "forward" not in vars(model):
            raise ConfigError("runs.<run>.logprob_temperature: this TRL version adds no fused LM head to replace")
        del model.forward  # back to the class's forward, which the fused head wraps
        add_fused_lm_head(
            model, temperature=temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32, outputs=outputs
        )
    log.info("training log-probabilities at temperature %s (sampling at %s)", temperature, trainer.temperature)
