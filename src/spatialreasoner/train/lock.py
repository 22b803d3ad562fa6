"""One writer per training run: a lock (``filelock``) on the run's checkpoint folder, held for the whole job.

A second ``train`` job on the same folder (say, submitted again after the Snakemake controller died while the first
still runs) stops at once, naming the folder and the job that holds it, instead of writing checkpoints next to it.
The lock is an OS file lock, released when its process ends however it ends, so a crash leaves no stale lock.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from spatialreasoner.errors import DataError

log = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
HOLDER_NAME = ".writer.json"


def holder_record() -> dict:
    """Who this process is: host, process id, SLURM job (when there is one) and start time."""
    record = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    record["since"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return record


def _describe(holder: Path) -> str:
    try:
        record = json.loads(holder.read_text())
    except (OSError, ValueError):
        return "another process (its record is unreadable)"
    parts = [f"host {record.get('host')}", f"pid {record.get('pid')}"]
    if record.get("slurm_job_id"):
        parts.append(f"SLURM job {record['slurm_job_id']}")
    return f"another training job ({', '.join(parts)}, since {record.get('since')})"


def held_message(folder: Path) -> str:
    return (
        f"checkpoint folder {folder} is being written by {_describe(folder / HOLDER_NAME)}; two writers would "
        "overwrite each other's checkpoints. Wait for that job to end (or cancel it, e.g. scancel), then run "
        "again: training resumes from its newest checkpoint"
    )


@contextlib.contextmanager
def checkpoint_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on ``folder`` (created if needed) or raise a DataError naming the folder and its holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(held_message(folder)) from None
    try:
        (folder / HOLDER_NAME).write_text(json.dumps(holder_record()) + "\n")
        log.info("checkpoint folder %s: locked for this job (%s)", folder, LOCK_NAME)
        yield folder
    finally:
        lock.release()


def check_folder_is_free(folder: str | os.PathLike) -> None:
    """Raise the DataError of :func:`checkpoint_folder_lock` when another job holds ``folder``'s lock; take nothing.
    For a job that starts something expensive (a vLLM server on its own GPUs) before the trainer takes the lock."""
    folder = Path(folder)
    if not (folder / LOCK_NAME).exists():
        return
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(held_message(folder)) from None
    lock.release()


def main(argv: list[str] | None = None) -> int:
    """``python -m spatialreasoner.train.lock FOLDER [--log FILE]``: exit 2, naming the job that holds it, when
    another training job writes ``FOLDER``; 0 when it is free (the trainer then takes the lock itself)."""
    from spatialreasoner.utils import setup_logging

    parser = argparse.ArgumentParser(prog="python -m spatialreasoner.train.lock", description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--log", default=None, help="also append the refusal to this file (the rule's log)")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    try:
        check_folder_is_free(args.folder)
    except DataError as exc:
        logging.getLogger("spatialreasoner").error("train: %s", exc)
        return 2
    return 0


def is_first_process() -> bool:
    """The process that takes the lock: global rank 0 under ``accelerate launch`` (or the only process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


if __name__ == "__main__":
    raise SystemExit(main())
