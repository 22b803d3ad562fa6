"""``spatialreasoner checkpoint-model``: a finished run's intermediate checkpoint as a model folder for inference.

Copies ``checkpoint-<step>`` of the run's working folder (weights, processor, chat template) with the final model's
``run.json`` plus ``checkpoint_step``, written atomically like the final model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spatialreasoner.errors import DataError


def export_checkpoint(checkpoint: str | Path, final_model: str | Path, out: str | Path, step: int) -> Path:
    """Write ``checkpoint`` (``checkpoint-<step>`` of a run's working folder) as a model folder at ``out``.

    ``final_model`` is the run's final model folder: its ``run.json`` is copied with ``checkpoint_step`` added, and
    requiring it means the run finished, so the checkpoint is one of the run that produced the final model.
    """
    from spatialreasoner.train.common import export_final_model

    checkpoint, final_model = Path(checkpoint), Path(final_model)
    if not (final_model / "run.json").is_file():
        raise DataError(f"{final_model}: not a finished run's model folder (no run.json); train the run first")
    if not checkpoint.is_dir():
        siblings = sorted(p.name for p in checkpoint.parent.glob("checkpoint-*")) if checkpoint.parent.is_dir() else []
        raise DataError(
            f"{checkpoint}: missing; the run saved {', '.join(siblings) or 'no checkpoints'} (a checkpoint exists only "
            "at multiples of save_steps and at the stop, and save_total_limit removes older ones)"
        )
    state_file = checkpoint / "trainer_state.json"
    try:
        saved_step = int(json.loads(state_file.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{state_file}: cannot read the checkpoint's global_step ({exc})") from exc
    if saved_step != int(step):
        raise DataError(f"{state_file}: global_step is {saved_step}, expected {step}")
    record = json.loads((final_model / "run.json").read_text())
    record["checkpoint_step"] = int(step)
    return export_final_model(checkpoint, Path(out), record)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint-<step> folder of the run's working folder")
    parser.add_argument("--final-model", required=True, help="the run's final model folder (run.json is copied)")
    parser.add_argument("--step", required=True, type=int, help="the checkpoint's step (checked)")
    parser.add_argument("--out", required=True, help="model folder to write, atomically")


def run(args: argparse.Namespace) -> int:
    export_checkpoint(args.checkpoint, args.final_model, args.out, args.step)
    return 0
