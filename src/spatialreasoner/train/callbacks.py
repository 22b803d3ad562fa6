"""Trainer callbacks: stop at ``stop_steps`` with a checkpoint, and save a checkpoint when the job is told to stop.

Schedulers (SLURM's ``--signal``, a time limit, ``scancel``) send SIGTERM or SIGUSR1/2; the handler only sets a flag,
and the next step boundary saves a checkpoint and ends training, so a rerun resumes from it.
"""

from __future__ import annotations

import logging
import math
import signal

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


class FiniteMetricsCallback(TrainerCallback):
    """Stop training with :class:`TrainingDiverged` at the first logged step whose loss or gradient norm is NaN or
    infinite. The Trainer logs before it saves, so no checkpoint is written from the diverged step.

    Needs ``logging_nan_inf_filter=False`` (the Trainer otherwise replaces a non-finite loss by the running mean)."""

    def __init__(self, run_name: str):
        self.run_name = run_name
        self.last_finite_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if k in FINITE_METRICS and isinstance(v, (int, float))
               and not math.isfinite(v)}  # fmt: skip
        if bad:
            shown = ", ".join(f"{k} {v}" for k, v in bad.items())
            since = "" if self.last_finite_step + 1 >= state.global_step else (
                f" (logged over steps {self.last_finite_step + 1}-{state.global_step})")  # fmt: skip
            raise TrainingDiverged(
                f"run {self.run_name}: {shown} at step {state.global_step}{since}: training diverged and stopped; "
                f"no final model written. Checkpoints up to step {self.last_finite_step} came before it; lower "
                "learning_rate or max_grad_norm, or check the data, and remove the working folder to start afresh"
            )
        if any(k in (logs or {}) for k in FINITE_METRICS):
            self.last_finite_step = state.global_step


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
