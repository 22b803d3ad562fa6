"""``spatialreasoner gpu-check``: run every gpu-check stage in its own process within a time budget; print the table.

The recipes (batch sizes, sequence lengths, generations, pixel limits, evaluation length) are read from the paper's
config; each training and inference stage runs the 7B-shaped model where its memory estimate fits the GPU, else the
3B-shaped one (at a smaller batch if needed), and gets a share of the remaining budget as its time cap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from spatialreasoner.errors import ConfigError, SpatialReasonerError
from spatialreasoner.gpucheck import table
from spatialreasoner.gpucheck.common import first_line

log = logging.getLogger(__name__)

#: The command's default wall-clock budget: under 10 minutes on one GPU, with a margin for the start-up.
DEFAULT_BUDGET_SECONDS = 540
#: Seconds a stage process may overrun its cap (tearing down) before it is killed.
KILL_GRACE_SECONDS = 30
#: Shortest cap worth starting a stage with.
MIN_CAP_SECONDS = {"gpu": 45.0, "tiny": 20.0}
#: Fraction of the GPU's memory a stage's estimate may take.
MEMORY_HEADROOM = 0.92


@dataclass(frozen=True)
class Profile:
    """Sizes that differ between a GPU node (the paper's shapes) and ``--tiny`` (a CPU, small shapes)."""

    sft_steps: int = 20
    sft_warmup: int = 2
    grpo_steps: int = 3
    grpo_warmup: int = 1
    image_side: int = 448  # 448 x 448 = 200,704 pixels, the paper's upper limit: 256 image tokens
    infer_rows: int = 144
    official_batch: int = 36
    batch_sizes: tuple[int, ...] = (36, 72, 144, 16)
    max_new_tokens: int | None = None  # None: the config's evaluate.max_new_tokens
    sft_overrides: dict = field(default_factory=dict)
    grpo_overrides: dict = field(default_factory=dict)


GPU = Profile()
TINY = Profile(
    sft_steps=6,
    grpo_steps=2,
    image_side=224,
    infer_rows=72,
    batch_sizes=(36, 8, 72),
    max_new_tokens=16,
    sft_overrides={"per_device_train_batch_size": 2, "max_length": 256},
    grpo_overrides={"per_device_train_batch_size": 4, "max_completion_length": 16},
)


@dataclass(frozen=True)
class Stage:
    key: str  # --stages name
    kind: str  # sft, grpo, infer, infer-vllm
    variant: str
    module: str
    weight: float  # share of the budget
    needs: tuple[str, ...] = ()  # optional packages (device.OPTIONAL_MODULES keys)
    settings: tuple = ()  # extra spec entries


STAGES = (
    Stage("sft", "sft", "1 process, sdpa", "spatialreasoner.gpucheck.sft", 1.0, (), (("attn", "sdpa"),)),
    Stage("sft-flash-attn", "sft", "1 process, flash-attn 2", "spatialreasoner.gpucheck.sft", 0.7, ("flash-attn",),
          (("attn", "flash_attention_2"),)),
    Stage("sft-zero3", "sft-zero3", "accelerate + DeepSpeed ZeRO-3", "spatialreasoner.gpucheck.sft", 1.2,
          ("deepspeed",), (("attn", "auto"),)),
    Stage("grpo", "grpo", "generation by transformers", "spatialreasoner.gpucheck.grpo", 1.2, (),
          (("generation", "transformers"),)),
    Stage("grpo-vllm", "grpo-vllm", "generation by vLLM (colocate)", "spatialreasoner.gpucheck.grpo", 1.8, ("vllm",),
          (("generation", "vllm"),)),
    Stage("infer", "infer", "transformers", "spatialreasoner.gpucheck.inference", 1.2, (), (("backend", "hf"),)),
    Stage("infer-vllm", "infer-vllm", "vLLM", "spatialreasoner.gpucheck.inference", 1.8, ("vllm",),
          (("backend", "vllm"),)),
)  # fmt: skip
STAGE_KEYS = tuple(s.key for s in STAGES)
MODEL_ORDER = ("7b", "3b")


# ---------------------------------------------------------------- recipes and memory


#: Tokens per SFT sequence measured when the run sets no max_length: the official recipe's max_length.
MEASURED_SFT_LENGTH = 2048


def load_recipes(config_path: Path, sft_run: str, grpo_run: str) -> dict:
    """The SFT and GRPO runs, pixel limits, system prompt and evaluation length of the (validated) config."""
    from spatialreasoner.config import load_config

    if not config_path.is_file():
        raise ConfigError(f"config file {config_path} does not exist (give the paper's config with --config)")
    config = load_config(config_path)
    runs = config.get("runs") or {}
    for name, stage in ((sft_run, "sft"), (grpo_run, "grpo")):
        if name not in runs:
            raise ConfigError(f"{config_path}: runs.{name} does not exist; expected one of {sorted(runs)}")
        if runs[name].get("stage") != stage:
            raise ConfigError(f"{config_path}: runs.{name} is a {runs[name].get('stage')} run, not {stage}")
    drop = ("resources", "init", "data", "stop_steps", "num_train_epochs", "save_steps", "wandb", "report_to")
    sft = {k: v for k, v in runs[sft_run].items() if k not in drop}
    if sft.get("max_length") is None:
        # A run that truncates nothing (the paper's) is measured at the official recipe's length.
        sft["max_length"] = MEASURED_SFT_LENGTH
    return {
        "sft": sft,
        "grpo": {k: v for k, v in runs[grpo_run].items() if k not in drop},
        "min_pixels": int(config["vision"]["min_pixels"]),
        "max_pixels": int(config["vision"]["max_pixels"]),
        "system_prompt": str(config["prompts"]["system"]),
        "max_new_tokens": int(config.get("evaluate", {}).get("max_new_tokens", 512)),
    }


def estimate_gib(kind: str, model: str, recipe: dict, gpu_gib: float, image_tokens: int = 256) -> float:
    """A rough peak-memory estimate of a stage (bf16), to choose a model that fits before spending time on it.

    Training keeps bf16 weights, gradients and AdamW states (8 bytes a parameter) or, under ZeRO-3 on one process,
    fp32 master weights and states as well (18 bytes); activations are the checkpointed layer inputs, one layer's
    recomputation and the logits (16 bytes per logit: bf16, the fp32 loss copy, its gradient and softmax).
    """
    from spatialreasoner.gpucheck.architectures import architecture, parameter_counts, shapes

    arch = architecture(model)
    p, s = parameter_counts(arch)["total"], shapes(arch)
    gib = 2**30
    if kind in ("infer", "infer-vllm"):
        if kind == "infer-vllm":
            return 0.85 * gpu_gib if 2 * p < 0.6 * gpu_gib * gib else float("inf")
        return 1.3 * 2 * p / gib
    if kind.startswith("sft"):
        tokens = recipe["per_device_train_batch_size"] * (recipe.get("max_length") or MEASURED_SFT_LENGTH)
        logit_tokens = tokens
    else:
        prompt = image_tokens + 200
        tokens = recipe["per_device_train_batch_size"] * (prompt + recipe["max_completion_length"])
        logit_tokens = recipe["per_device_train_batch_size"] * recipe["max_completion_length"]
    per_param = 18 if kind == "sft-zero3" else 8
    act = tokens * s["hidden"] * 2 * s["layers"] + tokens * (20 * s["hidden"] + 6 * s["intermediate"]) * 2
    total = (per_param * p + act + logit_tokens * s["vocab"] * 16) / gib
    if kind == "grpo-vllm":
        total += recipe.get("vllm_gpu_memory_utilization", 0.25) * gpu_gib
    return total


def choose_model(kind: str, recipe: dict, gpu_gib: float, forced: str | None) -> tuple[str | None, dict, str]:
    """(model, recipe, note): the 7B where it fits, else the 3B, halving the batch until it fits; None if nothing."""
    batch_key = "per_device_train_batch_size"
    if forced:
        est = estimate_gib(kind, forced, recipe, gpu_gib)
        return forced, recipe, f"estimate {est:.0f} GiB of {gpu_gib:.0f} GiB (model forced)"
    limit = MEMORY_HEADROOM * gpu_gib
    for model in MODEL_ORDER:
        est = estimate_gib(kind, model, recipe, gpu_gib)
        if est <= limit:
            return model, recipe, f"estimate {est:.0f} GiB of {gpu_gib:.0f} GiB"
    if batch_key in recipe:
        step = recipe.get("num_generations", 1) if kind.startswith("grpo") else 1
        batch = recipe[batch_key]
        while batch > step:
            batch = max(step, (batch // 2) // step * step)
            smaller = {**recipe, batch_key: batch}
            est = estimate_gib(kind, MODEL_ORDER[-1], smaller, gpu_gib)
            if est <= limit:
                note = f"estimate {est:.0f} GiB of {gpu_gib:.0f} GiB at batch {batch} (recipe {recipe[batch_key]})"
                return MODEL_ORDER[-1], smaller, note
    est = estimate_gib(kind, MODEL_ORDER[-1], recipe, gpu_gib)
    return None, recipe, f"no model fits: the 3B needs about {est:.0f} GiB, the GPU has {gpu_gib:.0f} GiB"


# ---------------------------------------------------------------- budget and stage processes


class Budget:
    """Splits the remaining wall-clock time between the stages still to run, by weight."""

    def __init__(self, seconds: float, minimum: float):
        self.end = time.time() + seconds
        self.minimum = minimum

    def left(self) -> float:
        return self.end - time.time()

    def cap(self, weight: float, remaining_weight: float) -> float | None:
        """This stage's cap, or None when too little time is left to start it."""
        share = self.left() * weight / max(remaining_weight, weight)
        return share if share >= self.minimum else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_environment(tiny: bool) -> dict:
    """The environment of a stage process: offline, one GPU (none with --tiny), quiet tokenizers."""
    env = dict(os.environ)
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}  # fmt: skip
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    else:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0] if visible else "0"
    return env


def run_stage(name: str, module: str, spec: dict, workdir: Path, cap: float, env: dict,
              launcher: list[str] | None = None) -> dict:  # fmt: skip
    """Run one stage process with ``spec``; its result, or an error result naming why it gave none."""
    stage_dir = workdir / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = stage_dir / "spec.json", stage_dir / "result.json", stage_dir / "stage.log"
    spec = {**spec, "cap": cap, "workdir": str(stage_dir), "log_file": str(log_path)}
    spec_path.write_text(json.dumps(spec, indent=2))
    command = [*(launcher or [sys.executable]), "-m", module, str(spec_path), str(result_path)]
    log.info("stage %s: cap %.0f s: %s", name, cap, " ".join(command[-4:]))
    started = time.time()
    with open(stage_dir / "output.log", "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=cap + KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return {"status": "error", "error": f"timed out: killed after {cap + KILL_GRACE_SECONDS:.0f} s (cap "
                    f"{cap:.0f} s); log {stage_dir / 'output.log'}", "seconds": round(time.time() - started, 1)}  # fmt: skip
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        result = {"status": "error", "error": f"exited with code {code} without a result: "
                  f"{_last_error(stage_dir / 'output.log')}", "seconds": round(time.time() - started, 1)}  # fmt: skip
    log.info("stage %s: %s in %.0f s", name, result.get("status"), time.time() - started)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _last_error(log_path: Path) -> str:
    """The most telling line near the end of a stage's output: the last exception line, else the last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    for line in reversed(lines[-200:]):
        if "Error" in line or "error:" in line or "Killed" in line:
            return first_line(line)
    return first_line(lines[-1]) if lines else "no output"


# ---------------------------------------------------------------- the command


def accelerate_config_path(given: str) -> Path | None:
    """The accelerate config file, relative to the working folder or else to the checkout holding this package."""
    path = Path(given)
    if path.is_file():
        return path.resolve()
    checkout = Path(__file__).resolve().parents[3]
    return (checkout / given) if (checkout / given).is_file() else None


def gpu_check(args: argparse.Namespace) -> dict:
    """Run the selected stages; return the report (header, rows)."""
    tiny = bool(args.tiny)
    profile = TINY if tiny else GPU
    selected = parse_stages(args.stages)
    recipes = load_recipes(Path(args.config), args.sft_run, args.grpo_run)
    max_new = profile.max_new_tokens or recipes["max_new_tokens"]
    budget = Budget(float(args.budget), MIN_CAP_SECONDS["tiny" if tiny else "gpu"])
    env = stage_environment(tiny)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.time()

    probe = run_stage("device", "spatialreasoner.gpucheck.device", {"peak_tflops": args.peak_tflops}, workdir,
                      min(120.0, max(budget.left(), 30.0)), env)  # fmt: skip
    if probe.get("status") != "ok":
        raise SpatialReasonerError(f"cannot inspect the machine: {probe.get('error')}")
    if not tiny and not probe["cuda"]:
        raise SpatialReasonerError("no CUDA GPU is visible to PyTorch; use --tiny to check the CPU path")
    if not tiny and not probe.get("bf16"):
        raise SpatialReasonerError(f"{probe['device']} does not support bf16, the paper's precision")
    gpu_gib = probe.get("memory_gib") or 0.0
    header = {
        "device": probe["device"],
        "memory": f"{gpu_gib} GiB" if probe["cuda"] else "n/a (CPU)",
        "bf16 peak": f"{probe['peak_tflops']} TFLOP/s" if probe.get("peak_tflops") else "unknown",
        "mode": "--tiny (CPU, tiny model, small shapes)" if tiny else "GPU (paper shapes)",
        "python": probe["python"],
        "versions": ", ".join(f"{k} {v}" for k, v in probe["versions"].items() if v),
        "pixel limits": f"{recipes['min_pixels']:,}-{recipes['max_pixels']:,}",
    }
    zero3 = accelerate_config_path(args.accelerate_config)
    if zero3 is not None and "sft-zero3" in selected:
        check_zero3_file(zero3, tiny)

    # Which model (and recipe) each selected stage runs, or why it is skipped.
    plan = []
    for stage in STAGES:
        if stage.key not in selected:
            continue
        kind = stage.kind
        recipe = dict(recipes["grpo" if kind.startswith("grpo") else "sft"])
        recipe |= profile.grpo_overrides if kind.startswith("grpo") else profile.sft_overrides
        if kind == "grpo-vllm":
            recipe["vllm_gpu_memory_utilization"] = args.vllm_gpu_memory_utilization
        reason = skip_reason(stage, probe, zero3)
        model, note = ("tiny", "tiny model") if tiny else (None, "")
        if reason is None and not tiny:
            model, recipe, note = choose_model(kind, recipe, gpu_gib, args.model)
            if model is None:
                reason = note
        plan.append((stage, model, recipe, note, reason))

    # Build each needed model once.
    models: dict[str, dict] = {}
    for name in dict.fromkeys(m for _, m, _, _, r in plan if r is None and m):
        cap = min(300.0, max(budget.left() * 0.3, 60.0))
        spec = {"model": name, "out": str(workdir / f"model-{name}"), "min_pixels": recipes["min_pixels"],
                "max_pixels": recipes["max_pixels"], "seed": 0}  # fmt: skip
        result = run_stage(f"build-{name}", "spatialreasoner.gpucheck.models", spec, workdir, cap, env)
        models[name] = result
        rows.append(table.model_row(_model_label(name), result))

    remaining = sum(s.weight for s, _, _, _, r in plan if r is None)
    for stage, model, recipe, note, reason in plan:
        label = _model_label(model) if model else None
        counted = reason is None  # its weight is in `remaining`
        if reason is None and models.get(model, {}).get("status") != "ok":
            reason = f"the model could not be built: {models.get(model, {}).get('error', 'not built')}"
        cap = budget.cap(stage.weight, remaining) if reason is None else None
        if reason is None and cap is None:
            reason = f"time budget used up ({budget.left():.0f} s left of {args.budget:.0f} s)"
        if counted:
            remaining -= stage.weight
        if reason is not None:
            rows.append(table.row(_stage_title(stage), stage.variant, label, reason=reason))
            continue
        spec = {
            **dict(stage.settings),
            "model": model,
            "model_dir": models[model]["dir"],
            "recipe": recipe,
            "min_pixels": recipes["min_pixels"],
            "max_pixels": recipes["max_pixels"],
            "image_side": profile.image_side,
            "peak_tflops": probe.get("peak_tflops"),
            "system_prompt": recipes["system_prompt"],
            "memory_note": note,
            "seed": 0,
        }
        launcher = None
        if stage.kind.startswith("sft"):
            spec |= {"steps": args.sft_steps or profile.sft_steps, "warmup_steps": profile.sft_warmup}
            if stage.kind == "sft-zero3":
                # One GPU; on a CPU (--tiny) two processes of DeepSpeed's CPU accelerator, so that ZeRO-3 shards.
                launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(zero3),
                            "--num_processes", "2" if tiny else "1", "--num_machines", "1",
                            "--mixed_precision", "no" if tiny else "bf16", "--main_process_port", str(free_port())]  # fmt: skip
        elif stage.kind.startswith("grpo"):
            spec |= {"steps": args.grpo_steps or profile.grpo_steps, "warmup_steps": profile.grpo_warmup,
                     "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization,
                     "vllm_max_model_length": 2 * profile.image_side**2 // 784 + 1024 + recipe["max_completion_length"]}  # fmt: skip
        else:
            spec |= {"rows": profile.infer_rows, "official_batch": profile.official_batch,
                     "batch_sizes": list(profile.batch_sizes), "max_new_tokens": max_new,
                     "max_model_len": 2 * profile.image_side**2 // 784 + 1024 + max_new}  # fmt: skip
            if stage.kind == "infer-vllm":
                hf = next((r for r in rows if r["stage"] == "inference" and r["status"] == "ok"), None)
                spec["reference"] = hf["figures"]["outputs"] if hf else None
                if hf is None:
                    spec["rows"] = profile.infer_rows
        stage_env = {**env, "DS_ACCELERATOR": "cpu"} if tiny and stage.kind == "sft-zero3" else env
        result = run_stage(stage.key, stage.module, spec, workdir, cap, stage_env, launcher)
        result["memory_note"] = note
        rows.extend(_rows_for(stage, label, result))

    report = {"header": header, "rows": rows, "workdir": str(workdir), "seconds": round(time.time() - started, 1),
              "budget_seconds": float(args.budget), "probe": probe}  # fmt: skip
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        report["workdir"] = None
    return report


def check_zero3_file(path: Path, tiny: bool) -> None:
    """The ZeRO-3 row's accelerate config must be a ZeRO-3 file the training can use (before any stage runs)."""
    from spatialreasoner.train.launch import check_zero_settings, zero_settings_of_file

    settings = zero_settings_of_file(path)
    if settings is None:
        raise ConfigError(f"--accelerate-config {path}: distributed_type is not DEEPSPEED; expected a ZeRO-3 file")
    run = {"precision": "fp32" if tiny else "bf16", "resources": {"gpus": 0 if tiny else 1}}
    check_zero_settings(f"--accelerate-config {path}", settings, run, processes=2 if tiny else 1)


def skip_reason(stage: Stage, probe: dict, zero3: Path | None) -> str | None:
    """Why a stage cannot run on this machine, or None."""
    for package in stage.needs:
        if not probe["installed"].get(package):
            return f"{package} is not installed"
    if "flash-attn" in stage.needs and not probe["cuda"]:
        return "flash-attn needs a CUDA GPU"
    if stage.kind == "sft-zero3" and zero3 is None:
        return "the accelerate config workflow/accelerate/zero3.yaml was not found (give --accelerate-config)"
    return None


def _stage_title(stage: Stage) -> str:
    return {"sft": "SFT", "sft-zero3": "SFT", "grpo": "GRPO", "grpo-vllm": "GRPO"}.get(stage.kind, "inference")


def _model_label(model: str | None) -> str | None:
    from spatialreasoner.gpucheck.architectures import MODEL_NAMES

    return MODEL_NAMES.get(model, model) if model else None


def _rows_for(stage: Stage, label: str, result: dict) -> list[dict]:
    if stage.kind.startswith("sft"):
        return [table.sft_row(stage.variant, label, result)]
    if stage.kind.startswith("grpo"):
        return [table.grpo_row(stage.variant, label, result)]
    if stage.kind == "infer":
        return table.inference_rows(label, result)
    return [table.vllm_row(label, result)]


def parse_stages(text: str | None) -> tuple[str, ...]:
    if not text:
        return STAGE_KEYS
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGE_KEYS]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; expected some of {list(STAGE_KEYS)}")
    return chosen


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """``out`` (JSON) and the same name with ``.md`` (the Markdown table)."""
    from spatialreasoner.utils import write_json_atomic

    if out.suffix != ".json":
        raise ConfigError(f"--out must name a .json file (a .md file is written beside it), got {out}")
    md = out.with_suffix(".md")
    write_json_atomic(out, report)
    md.write_text(table.render_markdown(report["rows"], report["header"]))
    return out, md


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="every stage on the CPU with the tiny model")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as this .json (and .md)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS,
                        help=f"wall-clock seconds for all stages (default {DEFAULT_BUDGET_SECONDS})")  # fmt: skip
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {', '.join(STAGE_KEYS)}")
    parser.add_argument("--model", choices=MODEL_ORDER, default=None,
                        help="run every stage with this architecture (default: the 7B where it fits, else the 3B)")  # fmt: skip
    parser.add_argument("--config", default="config/config.yaml", help="the paper's config (recipes, pixel limits)")
    parser.add_argument("--sft-run", default="SpatialReasoner-SFT", help="the config's SFT run to take shapes from")
    parser.add_argument("--grpo-run", default="SpatialReasoner-Zero", help="the config's GRPO run to take shapes from")
    parser.add_argument("--accelerate-config", default="workflow/accelerate/zero3.yaml",
                        help="accelerate config of the ZeRO-3 row")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT steps per row (default 20; --tiny 6)")
    parser.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps per row (default 3; --tiny 2)")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.25,
                        help="GPU memory share of the colocated vLLM engine in the GRPO row")  # fmt: skip
    parser.add_argument("--workdir", default=None, help="folder for models and stage logs (kept; default: temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")


def run(args: argparse.Namespace) -> int:
    for name in ("sft_steps", "grpo_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.budget <= 0:
        raise ConfigError(f"--budget must be positive, got {args.budget}")
    if args.out is not None and args.out.suffix != ".json":
        raise ConfigError(f"--out must name a .json file (a .md file is written beside it), got {args.out}")
    report = gpu_check(args)
    print(table.render_text(report["rows"]))
    print(f"\n{report['header']['device']}; {report['header']['versions']}; {report['seconds']:.0f} s")
    if args.out:
        json_path, md_path = write_report(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    check_something_ran(report["rows"])
    return 0


def check_something_ran(rows: list[dict]) -> None:
    """A check whose every stage was skipped measured nothing: an error saying why each was skipped."""
    stages = [r for r in rows if r.get("stage") != "build model"]
    if stages and all(r.get("status") == "skipped" for r in stages):
        reasons = "; ".join(f"{r['stage']} ({r['variant']}): {r.get('reason')}" for r in stages)
        raise SpatialReasonerError(f"no stage ran, every selected stage was skipped: {reasons}")
