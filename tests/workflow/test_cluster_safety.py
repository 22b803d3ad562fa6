"""Two writers never share a checkpoint folder, and an unexpected exception's traceback lands in the rule's log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spatialreasoner import cli
from spatialreasoner.errors import DataError
from spatialreasoner.train.lock import HOLDER_NAME, checkpoint_folder_lock

HOLD = """
import sys, time
from spatialreasoner.train.lock import checkpoint_folder_lock
with checkpoint_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_folder(tmp_path):
    """A checkpoint folder locked by another process (a first training job still running)."""
    folder = tmp_path / "results" / "checkpoints" / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLURM_JOB_ID": "4242"},
    )
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_second_writer_stops_at_once_naming_the_folder_and_the_holder(held_folder):
    folder, holder = held_folder
    started = time.monotonic()
    with pytest.raises(DataError) as info, checkpoint_folder_lock(folder):
        pass
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"checkpoint folder {folder} is being written by another training job" in message
    assert f"pid {holder.pid}" in message and "SLURM job 4242" in message, message


def test_the_lock_is_free_again_when_its_holder_dies(held_folder):
    folder, holder = held_folder
    holder.kill()
    holder.wait()
    with checkpoint_folder_lock(folder):
        assert (folder / HOLDER_NAME).read_text().count(f'"pid": {os.getpid()}') == 1


def test_a_vllm_server_job_on_a_locked_folder_stops_before_starting_its_server(held_folder, tmp_path):
    """In vLLM server mode the job starts a server on its own GPUs before the trainer takes the lock: the job's
    command checks the lock first, so a second job never starts one."""
    from spatialreasoner.train.launch import train_command

    folder, holder = held_folder
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "server-started"
    (bin_dir / "trl").write_text(f"#!/bin/sh\ntouch {started}\nsleep 30\n")
    (bin_dir / "trl").chmod(0o755)
    cfg = {"resources": {"gpus": 2}, "vllm": {"mode": "server", "server_gpus": 1}}
    log = tmp_path / "train.log"
    cmd = train_command("run", cfg, init="base", data="d.parquet", checkpoint_dir=str(folder), out="out", log=str(log))
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    proc = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": path}
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not started.exists(), "the server was started on a folder another job writes"
    assert f"checkpoint folder {folder} is being written by another training job" in log.read_text()
    assert f"pid {holder.pid}" in log.read_text()


@pytest.mark.slow
def test_the_train_command_refuses_a_locked_folder_before_training(held_folder, tmp_path):
    folder, holder = held_folder
    log = tmp_path / "train.log"
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "--log", str(log), "train", "--run-name", "run",
         "--run-config", "{}", "--init", str(tmp_path / "no-model"), "--data", str(tmp_path / "no.parquet"),
         "--workdir", str(folder), "--out", str(tmp_path / "results/models/run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = log.read_text()
    # the lock is checked first: the missing model folder is not what stops it
    assert f"checkpoint folder {folder} is being written by another training job" in text, text
    assert "no-model" not in text
    assert sorted(p.name for p in folder.iterdir()) == [".writer.json", ".writer.lock"]


def test_an_unexpected_exception_leaves_its_traceback_in_the_log(monkeypatch, tmp_path):
    import spatialreasoner.config

    def boom(args):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(spatialreasoner.config, "run", boom)
    log = tmp_path / "logs" / "rule.log"
    assert cli.main(["--log", str(log), "validate-config", "config.yaml"]) == 1
    text = log.read_text()
    assert "validate-config failed:" in text and "Traceback (most recent call last)" in text
    assert 'in boom\n    raise RuntimeError("CUDA out of memory (simulated)")' in text
    assert "RuntimeError: CUDA out of memory (simulated)" in text


def test_an_error_while_importing_the_subcommand_leaves_its_traceback_in_the_log(monkeypatch, tmp_path):
    """A subcommand's module fails as it is imported (a missing CUDA library, a broken install): that happens before
    its arguments are parsed, and its traceback must reach the rule's log file as well."""
    (tmp_path / "broken_stage.py").write_text('raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken-stage", ("broken_stage", "a stage whose import fails"))
    log = tmp_path / "logs" / "rule.log"
    assert cli.main(["--log", str(log), "broken-stage"]) == 1
    text = log.read_text()
    assert "broken-stage failed:" in text and "Traceback (most recent call last)" in text
    assert "ImportError: libcudart.so.12: cannot open shared object file" in text
