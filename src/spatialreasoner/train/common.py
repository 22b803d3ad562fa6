"""What SFT and GRPO share: run-config defaults, TRL/transformers arguments, canonical tables, images, final export.

A run config is one entry of the config's ``runs`` (after schema defaults); ``RUN_DEFAULTS`` mirrors the schema.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.utils import atomic_path, git_commit, package_versions, write_json_atomic

log = logging.getLogger(__name__)

#: Defaults of a run's training keys (the schema's `runs` section states the same values).
RUN_DEFAULTS: dict = {
    "num_train_epochs": 1,
    "stop_steps": None,
    "learning_rate": 5.0e-6,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "num_processes": None,  # training processes; default: the job's GPUs (minus a vLLM server GPU), 1 on CPU
    "accelerate_config": None,  # accelerate config file; default: workflow/accelerate/zero3.yaml (GPUs), cpu.yaml
    "shutdown_timeout": 540,  # seconds `accelerate launch` waits for the signal checkpoint before killing processes
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "precision": "auto",  # auto = bf16 on GPUs, fp32 on CPU
    "attn_implementation": "auto",
    "gradient_checkpointing": True,
    "use_fast": True,  # the training's image processor: torchvision (True) or PIL (False, the official "slow" one)
    "save_steps": 1000,
    "save_total_limit": None,
    "logging_steps": 1,
    "dataloader_num_workers": 0,
    "report_to": ["tensorboard"],
    "wandb": None,  # {project, entity}: also log to Weights & Biases (WANDB_API_KEY from the environment)
    "trainer_args": {},  # extra SFTConfig/GRPOConfig fields, for ablations without code changes
    # SFT
    "max_length": 2048,
    "assistant_only_loss": False,
    # GRPO
    "rewards": ["accuracy", "format"],
    "reward_weights": None,
    "num_generations": 4,
    "max_prompt_length": 2048,
    "max_completion_length": 512,
    "beta": 0.0,
    "temperature": 0.9,
    "logprob_temperature": None,  # temperature of the training log-probs; None: `temperature` (TRL 1.16)
    "loss_type": "bnpo",  # token sum / token count of the local batch, as the official trainer
    "scale_rewards": "group",
    "log_completions": False,  # print sampled completions as a table at each logging step
    "system_prompt": "system",  # key of `prompts` used as the GRPO system prompt (null: none)
    "instruction": None,  # key of `prompts` replacing the question's last line (e.g. the 3D-reward ablation)
    "vllm": {"mode": None, "gpu_memory_utilization": 0.6, "server_gpus": 1, "importance_sampling_correction": True},
}


def resolve_run_config(run_cfg: Mapping) -> dict:
    """The run config with defaults filled in; unknown stages are a ConfigError."""
    cfg = {**RUN_DEFAULTS, **run_cfg}  # an explicit null is meant (max_length: null = never truncate)
    cfg["vllm"] = {**RUN_DEFAULTS["vllm"], **(run_cfg.get("vllm") or {})}
    if cfg.get("stage") not in ("sft", "grpo"):
        raise ConfigError(f"runs.<run>.stage must be 'sft' or 'grpo', got {cfg.get('stage')!r}")
    return cfg


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def model_dtype(cfg: Mapping) -> str:
    precision = cfg["precision"]
    if precision == "auto":
        return "bfloat16" if on_gpu() else "float32"
    if precision in ("bf16", "bfloat16"):
        return "bfloat16"
    if precision in ("fp32", "float32"):
        return "float32"
    raise ConfigError(f"runs.<run>.precision must be auto, bf16 or fp32, got {precision!r}")


def training_kwargs(cfg: Mapping, workdir: Path, max_steps: int, seed: int, run_name: str) -> dict:
    """Keyword arguments shared by SFTConfig and GRPOConfig."""
    report_to = list(cfg["report_to"] or [])
    if cfg.get("wandb"):
        if not os.environ.get("WANDB_API_KEY"):
            raise ConfigError("runs.<run>.wandb is set but WANDB_API_KEY is not in the environment")
        os.environ.setdefault("WANDB_PROJECT", str(cfg["wandb"].get("project", "spatialreasoner")))
        if cfg["wandb"].get("entity"):
            os.environ.setdefault("WANDB_ENTITY", str(cfg["wandb"]["entity"]))
        report_to.append("wandb")
    if "tensorboard" in report_to:
        # Offline step metrics inside the run's working folder.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(workdir / "tensorboard")
    bf16 = model_dtype(cfg) == "bfloat16"
    kwargs = {
        "output_dir": str(workdir),
        "run_name": run_name,
        "max_steps": int(max_steps),
        "learning_rate": float(cfg["learning_rate"]),
        "lr_scheduler_type": cfg["lr_scheduler_type"],
        "warmup_steps": float(cfg["warmup_ratio"]),  # < 1: a ratio of max_steps
        "per_device_train_batch_size": int(cfg["per_device_train_batch_size"]),
        "gradient_accumulation_steps": int(cfg["gradient_accumulation_steps"]),
        "max_grad_norm": float(cfg["max_grad_norm"]),
        "weight_decay": float(cfg["weight_decay"]),
        "bf16": bf16,
        "use_cpu": not on_gpu(),
        "gradient_checkpointing": bool(cfg["gradient_checkpointing"]),
        "save_strategy": "steps",
        "save_steps": int(cfg["save_steps"]),
        "save_total_limit": cfg["save_total_limit"],
        "logging_strategy": "steps",
        "logging_steps": int(cfg["logging_steps"]),
        "logging_first_step": True,
        "report_to": report_to or "none",
        "seed": int(seed),
        "dataloader_num_workers": int(cfg["dataloader_num_workers"]),
        "disable_tqdm": False,
        # A NaN/inf loss is logged as it is (not replaced by the running mean), so FiniteMetricsCallback sees it.
        "logging_nan_inf_filter": False,
    }
    if cfg["gradient_checkpointing"]:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    kwargs.update(cfg.get("trainer_args") or {})
    return kwargs


# --- canonical tables -----------------------------------------------------------------------------------------------


def read_table(path: str | Path, required: tuple[str, ...]):
    """Read a canonical training table (parquet), checking the columns a stage needs."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"training table {path} does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"training table {path} is not a readable parquet file: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"training table {path} lacks column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"training table {path} has no rows")
    return df


def image_path(row: Mapping, table: Path) -> str:
    """The row's image file (``image`` column; relative paths are relative to the table's folder)."""
    value = row.get("image")
    if not isinstance(value, str) or not value:
        raise DataError(f"{table}: row {row.get('source_row', row.get('id', '?'))} has no image path in column 'image'")
    path = Path(value)
    if not path.is_absolute():
        path = table.parent / path
    return str(path)


def load_rgb(path):
    """Open an image as RGB, as the official code does (the processor would convert too; this makes it explicit)."""
    from PIL import Image

    if not isinstance(path, (str, os.PathLike)):
        return path.convert("RGB") if hasattr(path, "convert") else path
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"image {path} cannot be read: {exc}") from exc


# --- final model ----------------------------------------------------------------------------------------------------

# Trainer state files of a checkpoint that do not belong in a model folder; DeepSpeed adds its shards' folder, their
# `latest` pointer and its conversion scripts (zero_to_fp32.py, zero_to_torch.py).
_NOT_MODEL_FILES = {"optimizer.pt", "scheduler.pt", "training_args.bin", "latest", "zero_to_fp32.py",
                    "zero_to_torch.py"}  # fmt: skip


def non_finite_weight(folder: Path) -> str | None:
    """The first floating-point tensor of the folder's safetensors files that holds a NaN or an infinity, as
    ``"<name> in <file>"``, or None when every one is finite (one tensor in memory at a time)."""
    import torch
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return f"{name} in {file.name}"
    return None


def check_finite_weights(folder: Path) -> None:
    """Every floating-point tensor of the folder's safetensors files is finite."""
    bad = non_finite_weight(folder)
    if bad is not None:
        raise DataError(
            f"checkpoint {folder}: weight {bad} is not finite (NaN or inf): training diverged, so no final model is "
            "written from it"
        )


def export_final_model(checkpoint: Path, out: Path, run_json: Mapping) -> Path:
    """Write the final model folder atomically from the last checkpoint: weights, processor, chat template,
    ``trainer_state.json`` and ``run.json``. Nothing is downloaded; the folder is complete or absent."""
    from spatialreasoner.modeling import check_model_dir, with_weight_hashes

    checkpoint, out = Path(checkpoint), Path(out)
    check_finite_weights(checkpoint)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for f in checkpoint.iterdir():
            if f.is_file() and f.name not in _NOT_MODEL_FILES and not f.name.startswith("rng_state"):
                shutil.copy2(f, tmp / f.name)
        config_file = tmp / "config.json"
        if config_file.is_file():
            # Training disables the KV cache (activation checkpointing); inference wants it back.
            config = json.loads(config_file.read_text())
            config["use_cache"] = True
            if isinstance(config.get("text_config"), dict):
                config["text_config"]["use_cache"] = True
            config_file.write_text(json.dumps(config, indent=2) + "\n")
        write_json_atomic(tmp / "run.json", with_weight_hashes(run_json, tmp))
        check_model_dir(tmp)
        if not any((tmp / n).is_file() for n in ("chat_template.jinja", "chat_template.json")):
            tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
            if "chat_template" not in tok_cfg:
                raise DataError(f"checkpoint {checkpoint} has no chat template to put in the final model")
    log.info("final model written to %s", out)
    return out


def run_record(run_name: str, run_cfg: Mapping, seed: int, init: str, data: str, extra: Mapping | None = None) -> dict:
    """The provenance written next to the final model as ``run.json``."""
    return {
        "run": run_name,
        "config": dict(run_cfg),
        "seed": seed,
        "init": str(init),
        "data": str(data),
        "versions": package_versions(
            ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "vllm", "spatialreasoner")
        ),
        "git_commit": git_commit(Path(__file__).parent),
        **(extra or {}),
    }
