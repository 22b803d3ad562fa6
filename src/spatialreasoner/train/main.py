"""``spatialreasoner train``: one SFT or GRPO run from a model folder and a canonical table to a final model folder.

Checkpoints go to the working folder (resumed automatically on a rerun); the final model is written last, atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from spatialreasoner.errors import SpatialReasonerError
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
    return sorted(k for k in set(before) | set(comparable) if before.get(k) != comparable.get(k))


#: Run keys that change how a run is saved, logged or scheduled, not what it learns: changing them keeps checkpoints.
#: (stop_steps only moves the stop inside the same full schedule, so a run can be extended from its checkpoints.)
BOOKKEEPING_KEYS = frozenset(
    {"resources", "stop_steps", "save_steps", "save_total_limit", "logging_steps", "log_completions", "report_to",
     "wandb", "dataloader_num_workers"}
)  # fmt: skip


def _comparable_config(cfg: Mapping, init: Path, data: Path) -> dict:
    """What a checkpoint depends on: the run's training settings, the initial model and the data."""
    from spatialreasoner.utils import sha256_file

    comparable = {k: v for k, v in cfg.items() if k not in BOOKKEEPING_KEYS}
    comparable["init"] = str(init)
    comparable["data_sha256"] = sha256_file(data)
    return json.loads(json.dumps(comparable, default=str))


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

    from spatialreasoner.modeling import check_model_dir, load_processor
    from spatialreasoner.train import grpo, sft
    from spatialreasoner.train.callbacks import LogMetricsCallback, SignalCheckpointCallback, StopAtStepCallback
    from spatialreasoner.train.common import export_final_model, resolve_run_config, run_record, training_kwargs
    from spatialreasoner.train.schedule import full_schedule_steps, warmup_steps

    cfg = resolve_run_config(run_cfg)
    check_model_dir(init)
    workdir, out = Path(workdir), Path(out)
    state = PartialState()
    num_processes = state.num_processes
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
    if cfg["stage"] == "grpo" and cfg.get("max_prompt_length"):
        # TRL's GRPOTrainer no longer truncates prompts (truncation would cut image tokens); recorded for the record.
        log.info("max_prompt_length=%s is recorded, not enforced", cfg["max_prompt_length"])
    record = run_record(
        run_name,
        cfg,
        seed,
        init,
        data,
        {"full_schedule_steps": total, "stop_steps": stop, "num_processes": num_processes, "rows": rows},
    )

    # Resuming checkpoints made with another config (learning rate, schedule, data...) would silently mix two
    # runs, so they are set aside. Every rank reads the old record before the main process replaces it.
    comparable = _comparable_config(cfg, init, data)
    resume = last_checkpoint(workdir)
    changed = _config_changes(workdir, comparable)
    state.wait_for_everyone()
    if changed and workdir.exists():
        if state.is_main_process:
            _set_aside_stale_checkpoints(workdir, changed)
        state.wait_for_everyone()
        resume = None
    if state.is_main_process:
        from spatialreasoner.utils import write_json_atomic

        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "run_config.json", comparable)
    if resume is not None and checkpoint_step(resume) >= stop:
        log.info("%s already reached step %d; writing the final model from it", resume, stop)
        if state.is_main_process:
            export_final_model(resume, out, record)
        state.wait_for_everyone()
        return out

    set_seed(seed)
    processor = load_processor(init, min_pixels=min_pixels, max_pixels=max_pixels)
    signal_cb = SignalCheckpointCallback().install()
    try:
        callbacks = [StopAtStepCallback(stop), signal_cb, LogMetricsCallback(), *extra_callbacks]
        kwargs = training_kwargs(cfg, workdir, total, seed, run_name)
        if cfg["stage"] == "sft":
            trainer = sft.build_trainer(cfg, kwargs, init, data, processor, callbacks)
            trainer.data_collator.chat_template = trainer.chat_template
        else:
            trainer = grpo.build_trainer(cfg, kwargs, init, data, processor, callbacks, prompts or {}, num_processes)
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
