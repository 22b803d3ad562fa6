"""What every gpu-check stage process shares: its spec and result files, deadlines, peak memory, timing steps.

A stage runs as ``python -m spatialreasoner.gpucheck.<stage> SPEC RESULT`` (or under ``accelerate launch``): it reads
its settings from the JSON file SPEC and writes ``{"status": "ok", ...figures}`` or ``{"status": "error", "error":
...}`` to RESULT, so a crash, an out-of-memory error or a hang in one stage never takes the others down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from spatialreasoner.utils import setup_logging, write_json_atomic

log = logging.getLogger(__name__)

#: Seconds a stage keeps for tearing down after its measuring loop stops at the deadline.
TEARDOWN_SECONDS = 15.0


def stage_main(run: Callable[[dict], dict]) -> int:
    """Entry point of a stage module: ``run(spec)`` returns its figures; any exception becomes an error result."""
    spec_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    setup_logging(spec.get("log_file"))
    log.info("stage %s: cap %.0f s", Path(sys.argv[0]).stem, float(spec.get("cap", 0)))
    started = time.time()
    try:
        result = {"status": "ok", **run(spec)}
        code = 0
    except Exception as exc:  # every failure is reported in the stage's row; the command goes on
        log.error("stage failed:\n%s", traceback.format_exc())
        result = {"status": "error", "error": f"{type(exc).__name__}: {first_line(str(exc))}"}
        code = 1
    result["seconds"] = round(time.time() - started, 2)
    if is_main_process():
        write_json_atomic(result_path, result)
    return code


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of an error message, shortened for a table cell."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


class Deadline:
    """The wall-clock time by which a stage must have stopped measuring (its cap minus the teardown reserve)."""

    def __init__(self, cap_seconds: float, reserve: float = TEARDOWN_SECONDS):
        self.end = time.time() + max(0.0, float(cap_seconds) - reserve)

    def left(self) -> float:
        return self.end - time.time()

    def passed(self) -> bool:
        return self.left() <= 0


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak memory of this process: CUDA memory allocated (and reserved) on a GPU, the resident set on a CPU."""
    import torch

    if torch.cuda.is_available():
        return {
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "peak_kind": "CUDA allocated",
        }
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_gib": round(rss_kib / 2**20, 3), "peak_kind": "process RSS"}


def finite(values) -> bool:
    values = list(values)
    return bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def model_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def step_timer_callback(deadline: Deadline, max_steps: int):
    """A TrainerCallback timing every optimizer step (synchronised) and ending training at the deadline."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.stopped_by_deadline = False
            self._t0 = None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.times.append(time.perf_counter() - self._t0)
            if state.global_step >= max_steps:
                control.should_training_stop = True
            elif deadline.left() < (self.times[-1] if self.times else 0):
                # The next step would not end before the deadline.
                self.stopped_by_deadline = True
                control.should_training_stop = True
            control.should_save = False
            return control

    return StepTimer()


def measured(times: list[float], warmup: int) -> tuple[int, float]:
    """Steps counted for throughput (the first ``warmup`` are not, while at least one other remains) and their time."""
    skip = warmup if len(times) > warmup else 0
    kept = times[skip:]
    return len(kept), float(sum(kept))


def finish(stage_run: Callable[[dict], dict]) -> None:
    sys.exit(stage_main(stage_run))
