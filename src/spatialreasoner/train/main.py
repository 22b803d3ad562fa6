"""``spatialreasoner train``: one SFT or GRPO run from a model folder and a canonical table to a final model folder.

Checkpoints go to the working folder (resumed automatically on a rerun); the final model is written last, atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from spatialreasoner.errors import ConfigError, SpatialReasonerError
from spatialreasoner.utils import json_object_arg

log = logging.getLogger(__name__)


class TrainingInterrupted(SpatialReasonerError):
    """Training stopped on a signal after saving a checkpoint; rerunning the job resumes from it."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", required=True, help="name of the run (a key of the config's runs)")
    parser.add_argument("--run-config", required=True, help="the run's config as JSON (config runs.<run>)")
    parser.add_argument("--init", required=True, type=Path, help="model folder to start from")
    parser.add_argument("--data", required=True, type=Path, help="canonical training table (parquet)")
    parser.add_argument("--workdir", required=True, type=Path, help="trainer working folder (checkpoint-N)")
    parser.add_argument("--out", required=True, type=Path, help="final model folder, written last and atomically")
    parser.add_argument("--prompts", default="{}", help="the config's prompts as JSON")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)


def table_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    from spatialreasoner.errors import DataError

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as exc:
        raise DataError(f"training table {path} is not a readable parquet file: {exc}") from exc


def last_checkpoint(workdir: Path) -> Path | None:
    """The checkpoint with the highest step in ``workdir`` that has a complete trainer state, or None."""
    if not workdir.is_dir():
        return None
    found = []
    for d in workdir.glob("checkpoint-*"):
        suffix = d.name.removeprefix("checkpoint-")
        if d.is_dir() and suffix.isdigit() and (d / "trainer_state.json").is_file():
            found.append((int(suffix), d))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def _config_changes(workdir: Path, comparable: Mapping) -> list[str]:
    """Keys whose value differs from the run config recorded in the working folder (none when nothing recorded)."""
    record = workdir / "run_config.json"
    if not record.is_file():
        return []
    before = json.loads(record.read_text())
    keys = (set(before) | set(comparable)) - LAYOUT_KEYS  # the batch layout is checked by _layout_conflict
    return sorted(k for k in keys if before.get(k) != comparable.get(k))


#: Run keys that change how a run is saved, logged or scheduled, not what it learns: changing them keeps checkpoints.
#: (stop_steps only moves the stop inside the same full schedule, so a run can be extended from its checkpoints.)
BOOKKEEPING_KEYS = frozenset(
    {"resources", "stop_steps", "save_steps", "save_total_limit", "logging_steps", "log_completions", "report_to",
     "wandb", "dataloader_num_workers", "shutdown_timeout"}
)  # fmt: skip


#: How the global batch is split over processes: compared through the working folder's schedule.json instead, so
#: that a run resumes on another process count when its samples per step and schedule stay the same.
LAYOUT_KEYS = frozenset(
    {"num_processes", "per_device_train_batch_size", "gradient_accumulation_steps", "accelerate_config"}
)


def _layout_conflict(workdir: Path, resume: Path | None, layout: Mapping) -> str | None:
    """Why ``resume`` cannot continue with this job's batch layout (None when it can or nothing was recorded)."""
    from spatialreasoner.train.schedule import resume_conflict

    record = workdir / "schedule.json"
    if resume is None or not record.is_file():
        return None
    before = json.loads(record.read_text())
    problem = resume_conflict(before, layout)
    if problem is None and zero_conflict(before, layout):
        return None  # told apart by the caller, whose way out differs
    if problem is None and before.get("num_processes") != layout["num_processes"]:
        log.warning("resuming %s, made with %s process(es), with %s: weights, optimizer, schedule and data position "
                    "carry over, per-process random states only where the rank existed before",
                    resume, before.get("num_processes"), layout["num_processes"])  # fmt: skip
    return problem


def zero_conflict(before: Mapping, now: Mapping) -> str | None:
    """Why a checkpoint cannot resume under this job's ZeRO layout: ZeRO-3 keeps each process's shard of the weights
    and optimizer states (``global_step<N>/zero_pp_rank_<r>_*``), so it resumes only on its own process count, and
    a checkpoint made with DeepSpeed or without it resumes only the same way (None when it can)."""
    was, now_stage = before.get("zero_stage"), now.get("zero_stage")

    def mode(stage) -> str:
        return f"with DeepSpeed ZeRO-{stage}" if stage else "without DeepSpeed"

    if was != now_stage:
        return f"it was trained {mode(was)}; this job trains {mode(now_stage)}"
    if was and before.get("num_processes") != now.get("num_processes"):
        return (
            f"its ZeRO-{was} shards are split over {before.get('num_processes')} process(es); this job has "
            f"{now.get('num_processes')}"
        )
    return None


def _comparable_config(cfg: Mapping, init: Path, data: Path) -> dict:
    """What a checkpoint depends on: the run's training settings, the initial model and the data."""
    from spatialreasoner.utils import sha256_file

    comparable = {k: v for k, v in cfg.items() if k not in BOOKKEEPING_KEYS}
    comparable["init"] = str(init)
    comparable["data_sha256"] = sha256_file(data)
    return json.loads(json.dumps(comparable, default=str))


def _resume_decision(state, workdir: Path, comparable: Mapping, layout: Mapping):
    """(checkpoint to resume or None, changed config keys, layout conflict or None, whether to set the working folder
    aside, ZeRO layout conflict or None), decided by rank 0 alone and broadcast: every rank then acts on the same
    answer, even if rank 0 has already moved the folder by the time a slower rank would have looked at it."""
    decision = [None]
    if state.is_main_process:
        resume = last_checkpoint(workdir)
        changed = _config_changes(workdir, comparable)
        conflict = None if changed else _layout_conflict(workdir, resume, layout)
        stale = bool(changed) and workdir.exists()
        # ZeRO-3 shards resume only under the same ZeRO layout (stage and process count).
        sharded = None
        record_file = workdir / "schedule.json"
        if not changed and resume is not None and record_file.is_file():
            sharded = zero_conflict(json.loads(record_file.read_text()), layout)
        decision = [(None if stale or resume is None else str(resume), changed, conflict, stale, sharded)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision, from_process=0)
    resume, changed, conflict, stale, sharded = decision[0]
    return (Path(resume) if resume else None), list(changed), conflict, stale, sharded


def _set_aside_stale_checkpoints(workdir: Path, changed: list[str]) -> Path:
    """Move a working folder made with another run config out of the way, so that training starts afresh."""
    stale = workdir.with_name(f"{workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.rename(stale)
    log.warning("the run config changed since %s was written (%s): moved it to %s and starting afresh",
                workdir, ", ".join(changed), stale)  # fmt: skip
    return stale


def train(
    run_name: str,
    run_cfg: Mapping,
    init: Path,
    data: Path,
    workdir: Path,
    out: Path,
    prompts: Mapping | None = None,
    seed: int = 42,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_callbacks=(),
) -> Path:
    """Train (or resume) one run and write its final model folder; returns ``out``."""
    from accelerate import PartialState
    from transformers import set_seed

    from spatialreasoner.config import check_finite_numbers
    from spatialreasoner.modeling import check_model_dir, load_processor
    from spatialreasoner.train import grpo, sft
    from spatialreasoner.train.callbacks import (
        FiniteMetricsCallback,
        LogMetricsCallback,
        SignalCheckpointCallback,
        StopAtStepCallback,
    )
    from spatialreasoner.train.common import (
        export_final_model,
        on_gpu,
        resolve_run_config,
        run_record,
        training_kwargs,
    )
    from spatialreasoner.train.launch import log_from_main_process_only
    from spatialreasoner.train.schedule import batch_layout, full_schedule_steps, warmup_steps

    cfg = resolve_run_config(run_cfg)
    check_finite_numbers(dict(run_cfg), ("runs", run_name))  # before anything is read, moved or written
    check_model_dir(init)
    workdir, out = Path(workdir), Path(out)
    # On CPU the processes `accelerate launch` starts join a gloo group only when told to use the CPU.
    state = PartialState(cpu=not on_gpu())
    log_from_main_process_only(state.process_index, state.num_processes)
    num_processes = state.num_processes
    # Under `accelerate launch` with DeepSpeed: the settings the launcher handed over, checked against the run.
    from spatialreasoner.train.launch import check_zero_settings, zero_settings_of_environment

    zero = zero_settings_of_environment(os.environ)
    if zero is not None:
        check_zero_settings(
            "the launcher's DeepSpeed settings (ACCELERATE_DEEPSPEED_*, ACCELERATE_MIXED_PRECISION)",
            zero, cfg, num_processes, launched=True,
        )  # fmt: skip
    rows = table_rows(data)
    generations = cfg["num_generations"] if cfg["stage"] == "grpo" else 1
    total = full_schedule_steps(
        rows,
        cfg["per_device_train_batch_size"],
        num_processes,
        cfg["num_train_epochs"],
        cfg["gradient_accumulation_steps"],
        generations,
    )
    stop = int(cfg["stop_steps"] or total)
    if stop > total:
        log.warning("stop_steps=%d exceeds the full schedule (%d steps); training ends at %d", stop, total, total)
        stop = total
    log.info(
        "run %s (%s): %d rows, %d process(es); full schedule %d steps over %s epochs (warmup %d), stopping at %d",
        run_name,
        cfg["stage"],
        rows,
        num_processes,
        total,
        cfg["num_train_epochs"],
        warmup_steps(total, cfg["warmup_ratio"]),
        stop,
    )
    # Every SFT sequence / GRPO prompt within the run's limits and the model's context, before anything is written
    # or loaded (every rank checks, so that all stop together).
    from spatialreasoner.budget import check_training_budget

    budget = check_training_budget(
        cfg, data, load_processor(init, min_pixels=min_pixels, max_pixels=max_pixels), init, prompts
    )
    record = run_record(
        run_name,
        cfg,
        seed,
        init,
        data,
        {"full_schedule_steps": total, "stop_steps": stop, "num_processes": num_processes, "rows": rows,
         "token_budget": budget},
    )  # fmt: skip

    # Resuming checkpoints made with another config (learning rate, schedule, data...) would silently mix two
    # runs, so they are set aside. Rank 0 alone reads the old record and the checkpoints, and every rank gets its
    # answer (_resume_decision) before rank 0 replaces the record below.
    comparable = _comparable_config(cfg, init, data)
    layout = batch_layout(cfg["per_device_train_batch_size"], num_processes, cfg["gradient_accumulation_steps"], total)
    layout["zero_stage"] = zero["zero_stage"] if zero else None
    resume, changed, conflict, stale, sharded = _resume_decision(state, workdir, comparable, layout)
    if sharded and not conflict:
        aside = workdir.with_name(f"{workdir.name}.weights-only")
        raise ConfigError(
            f"run {run_name}: {resume} cannot be resumed: {sharded}. Run it as it was trained (the same accelerate "
            "config and num_processes), or restart from its consolidated weights (its model.safetensors) with a fresh "
            f"optimizer: move {workdir} aside (e.g. `mv {workdir} {aside}`) and run this job's command with "
            f"--init {aside / resume.name}. For the fp32 master weights of a bf16 ZeRO-3 run instead, convert its "
            f"shards first: `python {aside / resume.name / 'zero_to_fp32.py'} {aside / resume.name} "
            f"{aside / (resume.name + '-fp32')} --safe_serialization`"
        )
    if conflict:
        aside = workdir.with_name(f"{workdir.name}.weights-only")
        # Another global batch would change the learning rate at every step and the data each step sees.
        raise ConfigError(
            f"run {run_name}: {resume} cannot be resumed: {conflict}. Run it with the same samples per step "
            "(processes x per_device_train_batch_size x gradient_accumulation_steps), or restart from its weights "
            f"with a fresh optimizer and the new schedule: move {workdir} aside (e.g. `mv {workdir} {aside}`) and "
            f"run this job's command with --init {aside / resume.name}"
        )
    if stale:
        if state.is_main_process:
            _set_aside_stale_checkpoints(workdir, changed)
        state.wait_for_everyone()
    if state.is_main_process:
        from spatialreasoner.utils import write_json_atomic

        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "run_config.json", comparable)
        write_json_atomic(workdir / "schedule.json", layout)
    if resume is not None and checkpoint_step(resume) >= stop:
        log.info("%s already reached step %d; writing the final model from it", resume, stop)
        if state.is_main_process:
            export_final_model(resume, out, record)
        state.wait_for_everyone()
        return out

    set_seed(seed)
    processor = load_processor(init, min_pixels=min_pixels, max_pixels=max_pixels, use_fast=cfg["use_fast"])
    log.info("image processor: %s", type(processor.image_processor).__name__)
    signal_cb = SignalCheckpointCallback().install()
    try:
        callbacks = [StopAtStepCallback(stop), signal_cb, LogMetricsCallback(), FiniteMetricsCallback(run_name),
                     *extra_callbacks]  # fmt: skip
        kwargs = training_kwargs(cfg, workdir, total, seed, run_name)
        if cfg["stage"] == "sft":
            trainer = sft.build_trainer(cfg, kwargs, init, data, processor, callbacks)
            trainer.data_collator.chat_template = trainer.chat_template
        else:
            trainer = grpo.build_trainer(cfg, kwargs, init, data, processor, callbacks, prompts or {}, num_processes)
        if trainer.args.device.type == "cpu" and trainer.args.device.index is not None:
            # accelerate names each CPU process's device cpu:<index>, and the Trainer loads a checkpoint's optimizer
            # state with map_location=args.device, which torch.load rejects for cpu:0 ("don't know how to restore
            # data location"); plain cpu is the same memory.
            import torch

            trainer.args.__dict__["_setup_devices"] = torch.device("cpu")
        if resume is not None:
            log.info("resuming from %s (step %d)", resume, checkpoint_step(resume))
        started = time.time()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        log.info("training stopped at step %d after %.1f s", trainer.state.global_step, time.time() - started)
    finally:
        signal_cb.uninstall()
    if signal_cb.received is not None:
        raise TrainingInterrupted(
            f"run {run_name} stopped by a signal at step {trainer.state.global_step}; checkpoint saved in {workdir}; "
            "rerun to resume"
        )
    final = workdir / f"checkpoint-{trainer.state.global_step}"
    if trainer.state.global_step < stop or not final.is_dir():
        raise SpatialReasonerError(
            f"run {run_name} ended at step {trainer.state.global_step} without reaching stop_steps={stop} "
            f"(checkpoint {final} {'exists' if final.is_dir() else 'missing'})"
        )
    if trainer.accelerator.is_main_process:
        export_final_model(final, out, record)
    trainer.accelerator.wait_for_everyone()
    return out


def run(args: argparse.Namespace) -> int:
    import transformers

    transformers.utils.logging.set_verbosity_info()
    run_cfg = json_object_arg(args.run_config, "--run-config")
    prompts = json_object_arg(args.prompts, "--prompts")
    from spatialreasoner.train.lock import checkpoint_folder_lock, is_first_process

    # one writer per checkpoint folder: the first process holds the lock for the whole job
    with checkpoint_folder_lock(args.workdir) if is_first_process() else contextlib.nullcontext():
        train(
            args.run_name,
            run_cfg,
            args.init,
            args.data,
            args.workdir,
            args.out,
            prompts=prompts,
            seed=args.seed,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
        )
    return 0
