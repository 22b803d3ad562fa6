"""What ``accelerate launch`` does with a stop signal: two CPU processes whose "checkpoint" takes --save seconds
after the signal, with torch's launcher defaults and with the environment the training jobs set.

Usage: python benchmarks/bench_signal.py [--save 45]. Prints, per case, when the processes got the signal, whether
their save finished, and when the launcher exited.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spatialreasoner.train.launch import ACCELERATE_CONFIGS, launcher_environment

ROOT = Path(__file__).resolve().parents[1]


def worker(out: Path, save: float) -> None:
    """One launched process: wait for SIGTERM/SIGUSR1, then 'save' for ``save`` seconds and record it."""
    rank, got = os.environ["RANK"], []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, f: got.append(time.time()))
    (out / f"ready{rank}").write_text(str(os.getpid()))
    while not got:
        time.sleep(0.02)
    (out / f"got{rank}").write_text(repr(got[0]))
    time.sleep(save)
    (out / f"saved{rank}").touch()


def case(sig: signal.Signals, save: float, env: dict[str, str]) -> str:
    out = Path(tempfile.mkdtemp(prefix="bench-signal-"))
    cmd = [shutil.which("accelerate") or "accelerate", "launch", "--config_file", str(ROOT / ACCELERATE_CONFIGS["cpu"]),
           "--num_processes", "2", "--main_process_port", "0", __file__, "--worker", str(out), "--save", str(save)]  # fmt: skip
    launcher = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not all((out / f"ready{r}").exists() for r in (0, 1)):
        if launcher.poll() is not None:
            return f"launcher exited early with {launcher.returncode}"
        time.sleep(0.05)
    sent = time.time()
    launcher.send_signal(sig)
    launcher.wait()
    exited = time.time() - sent
    got = [f"{float((out / f'got{r}').read_text()) - sent:.2f} s" if (out / f"got{r}").exists() else "never"
           for r in (0, 1)]  # fmt: skip
    saved = [(out / f"saved{r}").exists() for r in (0, 1)]
    for r in (0, 1):  # processes the launcher left behind: it died without forwarding the signal
        if not (out / f"got{r}").exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((out / f"ready{r}").read_text()), signal.SIGKILL)
    shutil.rmtree(out, ignore_errors=True)
    return f"launcher exit {launcher.returncode} after {exited:.1f} s; processes got it after {got}; save done {saved}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=float, default=45.0, help="seconds the processes need to save")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.save)
    jobs = launcher_environment({})
    for sig, env, label in (
        (signal.SIGTERM, {}, "torch defaults"),
        (signal.SIGTERM, jobs, "training job environment"),
        (signal.SIGUSR1, {}, "torch defaults"),
        (signal.SIGUSR1, jobs, "training job environment"),
    ):
        print(f"{sig.name}, save {args.save:.0f} s, {label}: {case(sig, args.save, env)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
