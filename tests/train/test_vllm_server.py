"""Server-mode GRPO jobs: the composed command starts the vLLM server on its GPU, waits until it answers before the
trainer starts, fails naming the server's log when the server dies first, and stops the server when the job ends or
fails. ``trl`` and ``accelerate`` are stand-in executables here (the real ones need GPUs and NCCL): a small HTTP
server answering ``/health`` like ``trl vllm-serve``, and a trainer that records what it saw."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from spatialreasoner.train import launch
from spatialreasoner.train.vllm_server import ServerNotReady, wait_until_ready

SERVER = """\
#!{python}
import http.server, os, sys, time
open(os.environ["RECORD"] + ".server", "w").write(f"{{os.getpid()}}\\n{{os.environ.get('CUDA_VISIBLE_DEVICES')}}\\n"
                                                 + " ".join(sys.argv[1:]))
if os.environ.get("SERVER_FAILS"):
    sys.exit(3)
time.sleep(1.5)  # loading the model
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
port = int(sys.argv[sys.argv.index("--port") + 1])
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""
TRAINER = """\
#!{python}
import os, sys, urllib.request
ready = urllib.request.urlopen(f"http://127.0.0.1:{{os.environ['PORT']}}/health").status
open(os.environ["RECORD"] + ".trainer", "w").write(f"{{os.environ.get('CUDA_VISIBLE_DEVICES')}}\\n{{ready}}")
sys.exit(int(os.environ.get("TRAINER_EXIT", "0")))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][:1] != "Z"


@pytest.fixture
def job(tmp_path, monkeypatch):
    """Run the composed command of a 4-GPU server-mode run with the stand-ins; return (returncode, records)."""
    port = free_port()
    monkeypatch.setattr(launch, "VLLM_SERVER_PORT", port)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("trl", SERVER), ("accelerate", TRAINER)):
        (bin_dir / name).write_text(textwrap.dedent(text).format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    run = {"stage": "grpo", "resources": {"gpus": 4}, "vllm": {"mode": "server", "server_gpus": 1}}
    cmd = launch.train_command("r", run, init="models/base", data="d.parquet", checkpoint_dir="c", out="o",
                               log=str(tmp_path / "train.log"), min_pixels=3136, max_pixels=12544)  # fmt: skip

    def go(**env):
        record = tmp_path / "record"
        # the job's environment is active: its `python` is the one running the tests
        environ = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
            "RECORD": str(record),
            "PORT": str(port),
        }
        environ.update(env)
        proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {cmd}"], env=environ, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        server = (tmp_path / "record.server").read_text().splitlines()
        trainer = tmp_path / "record.trainer"
        return proc, server, trainer.read_text().splitlines() if trainer.exists() else None

    return go, port


def test_trainer_starts_after_the_server_answers_and_the_server_stops_with_the_job(job):
    go, port = job
    proc, server, trainer = go()
    assert proc.returncode == 0, proc.stderr
    pid, devices, args = int(server[0]), server[1], server[2].split()
    assert devices == "3" and trainer[0] == "0,1,2"  # the last GPU serves, the others train
    assert args[args.index("--port") + 1] == str(port) and args[args.index("--model") + 1] == "models/base"
    assert '{"max_pixels": 12544, "min_pixels": 3136}' in server[2]
    assert trainer[1] == "200"  # the server answered before the trainer's first line ran
    time.sleep(0.5)
    assert not alive(pid), "the server outlived the job"


def test_a_failing_trainer_still_stops_the_server(job):
    go, _ = job
    proc, server, trainer = go(TRAINER_EXIT="1")
    assert proc.returncode == 1 and trainer is not None
    time.sleep(0.5)
    assert not alive(int(server[0]))


def test_a_server_that_dies_first_fails_the_job_before_training(job, tmp_path):
    go, _ = job
    proc, _, trainer = go(SERVER_FAILS="1")
    assert proc.returncode == 1 and trainer is None
    assert "exited before it answered" in proc.stderr and "train.log.vllm" in proc.stderr


def test_readiness_times_out_naming_the_url():
    port = free_port()
    with pytest.raises(ServerNotReady, match=f"127.0.0.1:{port}/health within 2 s"):
        wait_until_ready(port, None, timeout=2)


class _Recorder:
    """A local HTTP server answering POSTs with ``status`` and recording their paths."""

    def __init__(self, status: int = 200):
        import http.server
        import threading

        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                paths.append(self.path)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _server_mode_trainer(base_url: str, main_process: bool, synced: list):
    """The parts of a TRL GRPOTrainer in server mode that a weight sync touches."""
    import types

    import requests

    client = types.SimpleNamespace(base_url=base_url, session=requests.Session())
    generation = types.SimpleNamespace(mode="server", vllm_client=client, sync_weights=lambda: synced.append(True))
    generation.accelerator = types.SimpleNamespace(is_main_process=main_process)
    return types.SimpleNamespace(vllm_generation=generation)


def test_server_mode_clears_the_encoder_cache_after_every_weight_sync():
    from spatialreasoner.train.vllm_server import clear_encoder_cache_after_sync

    server, synced = _Recorder(), []
    try:
        trainer = _server_mode_trainer(server.base_url, True, synced)
        clear_encoder_cache_after_sync(trainer)
        trainer.vllm_generation.sync_weights()
        trainer.vllm_generation.sync_weights()
        assert synced == [True, True] and server.paths == ["/reset_encoder_cache"] * 2
        other = _server_mode_trainer(server.base_url, False, synced)  # other ranks only take part in the sync
        clear_encoder_cache_after_sync(other)
        other.vllm_generation.sync_weights()
        assert len(synced) == 3 and len(server.paths) == 2
    finally:
        server.server.shutdown()


def test_a_failed_encoder_cache_reset_names_the_server():
    from spatialreasoner.train.vllm_server import clear_encoder_cache_after_sync

    server = _Recorder(status=404)
    try:
        trainer = _server_mode_trainer(server.base_url, True, [])
        clear_encoder_cache_after_sync(trainer)
        with pytest.raises(RuntimeError, match=rf"{server.base_url}: /reset_encoder_cache answered 404"):
            trainer.vllm_generation.sync_weights()
    finally:
        server.server.shutdown()
