"""Resuming a run from a checkpoint with its weights: loaded the way ``from_pretrained`` loads them, checked key by key.

A checkpoint stores weights under the names the model class saves (``model.layers.*``, ``visual.*``), which differ
from the module names in memory (``model.language_model.*``, ``model.visual.*``); transformers' ``Trainer`` loads
them with a non-strict ``load_state_dict`` that matches nothing and only warns, so training silently restarts from
the initial weights. Here the checkpoint goes through transformers' own key mapping, and any key that is missing,
left unused or of the wrong shape stops the job with a message naming the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spatialreasoner.errors import DataError
from spatialreasoner.modeling import loading_problems

log = logging.getLogger(__name__)


def load_checkpoint_weights(model, checkpoint: str | Path) -> None:
    """Copy the weights of ``checkpoint`` (a folder written by the trainer) into ``model``, in place.

    The folder is read by ``from_pretrained`` of the model's own class (which maps saved key names to module names)
    and copied only when every key matched, so a refused checkpoint leaves ``model`` as it was.
    """
    checkpoint = Path(checkpoint)
    try:
        loaded, info = type(model).from_pretrained(
            checkpoint,
            dtype=next(model.parameters()).dtype,
            attn_implementation=model.config._attn_implementation,
            ignore_mismatched_sizes=True,  # reported below with the other kinds, not raised without the keys
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"checkpoint {checkpoint}: its weights cannot be read to resume training: {exc}") from exc
    problems = loading_problems(info)
    if problems:
        raise DataError(
            f"checkpoint {checkpoint} does not match the model being trained ({'; '.join(problems)}); resuming "
            f"from it would not continue the same training. Delete {checkpoint} to resume from an earlier "
            "checkpoint, or the run's working folder to start afresh"
        )
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:  # same class: cannot happen unless the model was altered
        problems = loading_problems({"missing_keys": result.missing_keys, "unexpected_keys": result.unexpected_keys})
        raise DataError(
            f"checkpoint {checkpoint}: weights not copied into the model being trained ({'; '.join(problems)})"
        )
    log.info("resumed the weights of %s (%d tensors, every key matched)", checkpoint, len(state))


class CheckedResumeMixin:
    """Put before a transformers ``Trainer`` subclass: ``train(resume_from_checkpoint=...)`` then restores the
    weights through :func:`load_checkpoint_weights`; optimizer, scheduler, RNG and data position are the Trainer's.

    DeepSpeed and FSDP resume from their own engine states (loaded strictly by the Trainer), not from this path.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if (model is not None and model is not self.model) or getattr(self, "is_fsdp_enabled", False):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(self.model, resume_from_checkpoint)
