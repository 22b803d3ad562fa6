"""One writer per training run: a lock (``filelock``) on the run's checkpoint folder, held for the whole job.

A second ``train`` job on the same folder (say, submitted again after the Snakemake controller died while the first
still runs) stops at once, naming the folder and the job that holds it, instead of writing checkpoints next to it.
The lock is an OS file lock, released when its process ends however it ends, so a crash leaves no stale lock.
"""

from __future__ import annotations

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


@contextlib.contextmanager
def checkpoint_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on ``folder`` (created if needed) or raise a DataError naming the folder and its holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"checkpoint folder {folder} is being written by {_describe(folder / HOLDER_NAME)}; two writers would "
            "overwrite each other's checkpoints. Wait for that job to end (or cancel it, e.g. scancel), then run "
            "again: training resumes from its newest checkpoint"
        ) from None
    try:
        (folder / HOLDER_NAME).write_text(json.dumps(holder_record()) + "\n")
        log.info("checkpoint folder %s: locked for this job (%s)", folder, LOCK_NAME)
        yield folder
    finally:
        lock.release()


def is_first_process() -> bool:
    """The process that takes the lock: global rank 0 under ``accelerate launch`` (or the only process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0
