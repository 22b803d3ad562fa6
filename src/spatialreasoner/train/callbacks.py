"""Trainer callbacks: stop at ``stop_steps`` with a checkpoint, and save a checkpoint when the job is told to stop.

Schedulers (SLURM's ``--signal``, a time limit, ``scancel``) send SIGTERM or SIGUSR1/2; the handler only sets a flag,
and the next step boundary saves a checkpoint and ends training, so a rerun resumes from it.
"""

from __future__ import annotations

import logging
import math
import signal
from pathlib import Path

from transformers import TrainerCallback

from spatialreasoner.errors import SpatialReasonerError

log = logging.getLogger(__name__)

#: Signals that mean "save and stop": SIGTERM (time limit, scancel) and SLURM's warning signals.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class LogMetricsCallback(TrainerCallback):
    """Step metrics (loss, learning rate, rewards...) into the run's log file, not only the console and TensorBoard."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            log.info("step %d/%d: %s", state.global_step, state.max_steps, shown)


class TrainingDiverged(SpatialReasonerError):
    """The loss or gradient norm stopped being finite: the weights diverged, so no final model may be written."""


#: Logged metrics that must stay finite; the Trainer logs them after every rank's values were gathered, so every rank
#: sees the same numbers and stops at the same step.
FINITE_METRICS = ("loss", "grad_norm")


#: Prefix of a checkpoint found with non-finite weights after a divergence: the folder no longer matches
#: ``checkpoint-<step>``, so neither a rerun's resume nor the Trainer's ``save_total_limit`` rotation takes it for one.
NON_FINITE_PREFIX = "nonfinite-"


def _saved_checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-<step>`` folder of ``workdir``, by step."""
    found = []
    for folder in workdir.glob("checkpoint-*") if workdir.is_dir() else ():
        suffix = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and suffix.isdigit():
            found.append((int(suffix), folder))
    return sorted(found)


def set_aside_non_finite_checkpoints(workdir: Path, from_step: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Check the weights of the checkpoints of ``workdir`` saved at ``from_step`` or later and rename each that holds
    a NaN or an infinity to ``nonfinite-checkpoint-<step>``; returns ((checkpoint, new name, first non-finite weight)
    of each set aside, names of the checkpoints left, by step). The checkpoints before ``from_step`` need no check: a
    finite loss computed from their weights was logged after each of them."""
    from spatialreasoner.train.common import non_finite_weight

    moved = []
    for step, folder in _saved_checkpoints(workdir):
        bad = non_finite_weight(folder) if step >= from_step else None
        if bad is None:
            continue
        target, n = folder.with_name(NON_FINITE_PREFIX + folder.name), 1
        while target.exists():
            n += 1
            target = folder.with_name(f"{NON_FINITE_PREFIX}{folder.name}.{n}")
        folder.rename(target)
        log.warning("%s holds non-finite weights (%s): moved it to %s", folder, bad, target)
        moved.append((folder.name, target.name, bad))
    return moved, [folder.name for _, folder in _saved_checkpoints(workdir)]


def _on_rank_zero(state, decide):
    """``("ok", decide())`` from rank 0 alone, or ``("error", its error)``: every other rank waits for it and gets
    the same answer (a collective: every rank must call this at the same point)."""
    result = [None]
    if state.is_world_process_zero:
        try:
            result = [("ok", decide())]
        except Exception as exc:  # told to every rank, so that none waits for an answer that never comes
            result = [("error", f"{type(exc).__name__}: {exc}")]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0]


class FiniteMetricsCallback(TrainerCallback):
    """Stop training with :class:`TrainingDiverged` at the first logged step whose loss or gradient norm is NaN or
    infinite. The Trainer logs before it saves, so no checkpoint is written from the diverged step; but one saved at
    or after the last finite log may hold diverged weights (the loss logged at a step comes from the weights before
    its update). Those are checked, and each with a NaN or infinite weight is renamed ``nonfinite-checkpoint-<step>``
    by rank 0 while the other ranks wait, so that a rerun cannot resume from it; the error names the checkpoints
    that remain.

    Needs ``logging_nan_inf_filter=False`` (the Trainer otherwise replaces a non-finite loss by the running mean)."""

    def __init__(self, run_name: str):
        self.run_name = run_name
        self.last_finite_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run: the checkpoint it resumed from is vouched for only by a finite loss logged after it.
        self.last_finite_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if k in FINITE_METRICS and isinstance(v, (int, float))
               and not math.isfinite(v)}  # fmt: skip
        if bad:
            shown = ", ".join(f"{k} {v}" for k, v in bad.items())
            since = "" if self.last_finite_step + 1 >= state.global_step else (
                f" (logged over steps {self.last_finite_step + 1}-{state.global_step})")  # fmt: skip
            raise TrainingDiverged(
                f"run {self.run_name}: {shown} at step {state.global_step}{since}: training diverged and stopped; "
                f"no final model written. {self._checkpoints_after_divergence(Path(args.output_dir), state)} Lower "
                "learning_rate or max_grad_norm, or check the data, and remove the working folder to start afresh"
            )
        if any(k in (logs or {}) for k in FINITE_METRICS):
            self.last_finite_step = state.global_step

    def _checkpoints_after_divergence(self, workdir: Path, state) -> str:
        """Set aside the checkpoints with non-finite weights (rank 0); say which were and which remain usable."""
        outcome, answer = _on_rank_zero(state, lambda: set_aside_non_finite_checkpoints(workdir, self.last_finite_step))
        if outcome != "ok":
            return f"The checkpoints saved since step {self.last_finite_step} could not be checked ({answer})."
        moved, kept = answer
        text = "".join(f"{name} held non-finite weights ({weight}): moved to {new}. " for name, new, weight in moved)
        if kept:
            return f"{text}Usable checkpoints (finite weights) in {workdir}: {', '.join(kept)}."
        return f"{text}No usable checkpoint is left in {workdir}."


class StopAtStepCallback(TrainerCallback):
    """End training at ``stop_steps`` (inside a longer schedule) and save a checkpoint there."""

    def __init__(self, stop_steps: int):
        self.stop_steps = int(stop_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.stop_steps:
            log.info("reached stop_steps=%d: saving a checkpoint and stopping", self.stop_steps)
            control.should_save = True
            control.should_training_stop = True
        return control


class SignalCheckpointCallback(TrainerCallback):
    """On SIGTERM/SIGUSR1/SIGUSR2: finish the current step, save a checkpoint, stop training.

    ``received`` tells the caller afterwards that training ended because of a signal (so the final model must not be
    written). In a multi-process run every rank must decide the same step to save (saving is collective), so the
    flag is reduced across ranks at each step end.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous = {}

    def install(self) -> SignalCheckpointCallback:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        # Only set a flag: a checkpoint cannot be written safely from inside a signal handler mid-step.
        self.received = signum
        log.warning("received %s: a checkpoint will be saved at the end of this step", signal.Signals(signum).name)

    def _any_rank_received(self) -> bool:
        flag = self.received is not None
        try:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                from accelerate import PartialState

                t = torch.tensor([1 if flag else 0], device=PartialState().device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = bool(t.item())
                if flag and self.received is None:
                    self.received = signal.SIGTERM
        except (ImportError, RuntimeError):  # no process group: this rank's flag decides
            pass
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received():
            log.warning("saving checkpoint-%d and stopping because the job was told to stop", state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control
