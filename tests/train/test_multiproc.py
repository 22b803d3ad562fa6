"""Two CPU training processes through the job's own ``accelerate launch`` command (gloo): the schedule equals the
one-process schedule of the same global batch, rank 0 alone writes checkpoints, the final model and the log, and
``run.json`` records the process count."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spatialreasoner.train.launch import train_command
from spatialreasoner.train.main import train
from spatialreasoner.train.schedule import full_schedule_steps, official_lr

from .conftest import FAST_SFT, read_state

pytestmark = pytest.mark.slow


def job_command(run: str, cfg: dict, init: Path, data: Path, tmp_path: Path) -> tuple[str, Path]:
    """The shell command the workflow's rule runs for ``cfg`` (paths of this test), and its log file."""
    log = tmp_path / "train.log"
    cmd = train_command(
        run, cfg, init=str(init), data=str(data), checkpoint_dir=str(tmp_path / "work"), out=str(tmp_path / "model"),
        log=str(log), seed=0,
    )  # fmt: skip
    return cmd, log


def job_env() -> dict[str, str]:
    # The job finds `accelerate` and `spatialreasoner` on PATH, as in the workflow's environment.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_job(cmd: str, cwd: Path, log: Path, timeout: float = 600) -> None:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=job_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + (log.read_text()[-2000:] if log.exists() else "")


def learning_rates(state: dict) -> dict[int, float]:
    return {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}


def epochs(state: dict) -> dict[int, float]:
    return {h["step"]: h["epoch"] for h in state["log_history"] if "loss" in h}


def check_rank_zero_wrote(tmp_path: Path, log: Path, stop: int, saves: list[int]) -> None:
    """One copy of everything, written by rank 0; rank 1 adds only its own random state to each checkpoint."""
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("checkpoint-")) == sorted(
        f"checkpoint-{s}" for s in saves
    )
    for s in saves:
        files = {p.name for p in (work / f"checkpoint-{s}").iterdir()}
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
        assert sorted(f for f in files if f.startswith("rng_state")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "a temporary folder was left behind"
    # TensorBoard: one writer.
    assert len(list((work / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    text = log.read_text()
    lines = text.splitlines()
    # Progress comes from rank 0 only; the other rank writes warnings and errors, marked with its rank.
    assert not [line for line in lines if line.startswith("[rank 1]") and " INFO " in line]
    for step in range(1, stop + 1):
        assert sum(1 for line in lines if re.search(rf"step {step}/\d+: loss=", line)) == 1, f"step {step} logged twice"
    assert text.count("final model written to") == 1
    assert text.count("2 process(es)") == 1


STOP = 6
TWO = {**FAST_SFT, "num_train_epochs": 10, "learning_rate": 1e-3, "save_steps": 3, "report_to": ["tensorboard"],
       "per_device_train_batch_size": 2, "num_processes": 2, "stop_steps": STOP, "resources": {"gpus": 0}}  # fmt: skip
#: One process with the same global batch (4 rows per step).
ONE = {**TWO, "per_device_train_batch_size": 4, "num_processes": None, "report_to": []}


@pytest.fixture(scope="module")
def two_process_sft(tiny_model_dir, train_tables, tmp_path_factory, repo_root) -> Path:
    """A 2-process SFT job (checkpoints at steps 3 and 6) run through its shell command; its folder."""
    root = tmp_path_factory.mktemp("two")
    cmd, log = job_command("two", TWO, tiny_model_dir, train_tables["sft"], root)
    assert "accelerate launch --config_file workflow/accelerate/cpu.yaml --num_processes 2" in cmd
    run_job(cmd, repo_root, log)
    return root


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def losses(state: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_sft_with_two_processes_matches_one_process_of_the_same_global_batch(
    two_process_sft, tiny_model_dir, train_tables, tmp_path
):
    ref = train("one", ONE, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0)
    out = two_process_sft / "model"
    state, ref_state = read_state(out), read_state(ref)
    # 10 rows: ceil(10 / 4) = 3 steps per epoch on one process, ceil(ceil(10 / 2) / 2) = 3 on two.
    total = full_schedule_steps(10, 4, 1, 10)
    assert total == full_schedule_steps(10, 2, 2, 10) == 30
    assert state["max_steps"] == ref_state["max_steps"] == total and state["global_step"] == STOP
    lrs, ref_lrs = learning_rates(state), learning_rates(ref_state)
    assert sorted(lrs) == list(range(1, STOP + 1)) and lrs == ref_lrs
    for step, lr in lrs.items():
        assert lr == pytest.approx(official_lr(step, 1e-3, total, 0.1), rel=1e-6)
    # The Trainer's own count of steps per epoch (its fractional epoch at each step) is the same.
    assert epochs(state) == pytest.approx(epochs(ref_state)) and epochs(state)[3] == pytest.approx(1.0)
    # Inside an epoch both see the same rows per step (rank r takes the r-th half of the one-process batch).
    assert losses(state)[2] == pytest.approx(losses(ref_state)[2], rel=1e-4)
    record = json.loads((out / "run.json").read_text())
    assert record["num_processes"] == 2 and json.loads((ref / "run.json").read_text())["num_processes"] == 1
    assert record["full_schedule_steps"] == total
    check_rank_zero_wrote(two_process_sft, two_process_sft / "train.log", STOP, saves=[3, 6])


def killed_after_checkpoint_3(reference: Path, dest: Path) -> Path:
    """The working folder as a job killed right after checkpoint-3 leaves it (a copy of the reference's)."""
    work = dest / "work"
    work.mkdir(parents=True)
    shutil.copytree(reference / "work" / "checkpoint-3", work / "checkpoint-3")
    for name in ("run_config.json", "schedule.json"):
        shutil.copy2(reference / "work" / name, work / name)
    return work


def test_two_process_run_killed_after_a_checkpoint_resumes_with_its_weights(
    two_process_sft, tiny_model_dir, train_tables, tmp_path, repo_root
):
    ref_state = read_state(two_process_sft / "model")
    killed_after_checkpoint_3(two_process_sft, tmp_path)
    cmd, log = job_command("two", TWO, tiny_model_dir, train_tables["sft"], tmp_path)
    run_job(cmd, repo_root, log)
    assert "resuming from" in log.read_text() and "checkpoint-3 (step 3)" in log.read_text()
    state = read_state(tmp_path / "model")
    assert sorted(losses(state)) == list(range(1, STOP + 1))  # steps 1-3 come from the checkpoint's history
    for step in (4, 5, 6):
        assert losses(state)[step] == pytest.approx(losses(ref_state)[step], rel=1e-4), step
    assert max_weight_difference(tmp_path / "model", two_process_sft / "model") < 1e-5
    assert max_weight_difference(two_process_sft / "model", two_process_sft / "work" / "checkpoint-3") > 1e-4


def test_resuming_on_another_process_count_keeps_the_schedule_or_stops(
    two_process_sft, tiny_model_dir, train_tables, tmp_path
):
    from transformers import TrainerCallback

    from spatialreasoner.errors import ConfigError

    class RecordStart(TrainerCallback):
        start_step = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step

    ref_state = read_state(two_process_sft / "model")
    # One process with the same 4 samples per step: weights, optimizer and schedule carry over.
    work = killed_after_checkpoint_3(two_process_sft, tmp_path / "same-batch")
    recorder = RecordStart()
    out = train("two", ONE, tiny_model_dir, train_tables["sft"], work, tmp_path / "same-batch" / "model", seed=0,
                extra_callbacks=[recorder])  # fmt: skip
    state = read_state(out)
    assert recorder.start_step == 3 and state["max_steps"] == ref_state["max_steps"]
    assert learning_rates(state) == learning_rates(ref_state)
    # Step 4 sees the rows it saw on two processes, from checkpoint-3's weights (the first loss was 6% higher).
    assert losses(state)[4] == pytest.approx(losses(ref_state)[4], rel=1e-3)
    assert abs(losses(ref_state)[1] - losses(ref_state)[4]) > 0.02 * losses(ref_state)[4]

    # One process with 2 samples per step: another schedule, so the job stops and says what to do.
    work = killed_after_checkpoint_3(two_process_sft, tmp_path / "half-batch")
    half = {**ONE, "per_device_train_batch_size": 2}
    with pytest.raises(ConfigError) as err:
        train("two", half, tiny_model_dir, train_tables["sft"], work, tmp_path / "half-batch" / "model", seed=0)
    message = str(err.value)
    assert (
        "checkpoint-3 cannot be resumed: it was trained with 2 process(es) x 2 per process x 1 accumulation = 4 "
        "samples per step, a 30-step schedule; this job has 1 process(es) x 2 per process x 1 accumulation = 2 "
        f"samples per step, a {full_schedule_steps(10, 2, 1, 10)}-step schedule" in message
    )
    aside = work.with_name("work.weights-only")
    assert f"mv {work} {aside}" in message and f"--init {aside / 'checkpoint-3'}" in message
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-3", "run_config.json", "schedule.json"]

    # The way out the message gives: a weights-only restart from the checkpoint, fresh optimizer and new schedule.
    class RecordWeights(TrainerCallback):
        weights = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    work.rename(aside)
    start = RecordWeights()
    out = train("two", half, aside / "checkpoint-3", train_tables["sft"], work, tmp_path / "half-batch" / "model",
                seed=0, extra_callbacks=[start])  # fmt: skip
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(aside / "checkpoint-3").state_dict()
    assert start.weights.keys() == saved.keys()
    assert max((start.weights[k] - saved[k]).abs().max().item() for k in saved) == 0.0
    restarted = read_state(out)
    assert sorted(losses(restarted))[0] == 1 and restarted["max_steps"] == full_schedule_steps(10, 2, 1, 10)


def test_sigterm_to_the_launcher_saves_a_checkpoint_on_every_rank(tiny_model_dir, train_tables, tmp_path, repo_root):
    cfg = {**TWO, "num_train_epochs": 100, "stop_steps": 300, "save_steps": 1000, "report_to": []}
    cmd, log = job_command("sig", cfg, tiny_model_dir, train_tables["sft"], tmp_path)
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=repo_root, env=job_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 600
        while not re.search(r"step 3/\d+: loss=", log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:] if log.exists() else ""
            time.sleep(0.2)
        # bash runs the launcher in its own place: the signal goes to `accelerate launch` itself.
        assert b"accelerate" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        seconds = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode != 0 and "rerun to resume" in text, text[-3000:]
    assert "received SIGTERM" in text and any(
        line.startswith("[rank 1]") and "received SIGTERM" in line for line in text.splitlines()
    )
    checkpoints = list((tmp_path / "work").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (tmp_path / "model").exists()
    saved = read_state(checkpoints[0])["global_step"]
    assert 3 <= saved < 300
    files = {p.name for p in checkpoints[0].iterdir()}
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= files
    assert seconds < 540, seconds  # the processes saved and exited; the launcher did not wait for its timeout
    print(f"SIGTERM to exit: {seconds:.1f} s, checkpoint-{saved}")

    # The rerun resumes from it and finishes.
    cmd, log = job_command("sig", {**cfg, "stop_steps": saved + 2}, tiny_model_dir, train_tables["sft"], tmp_path)
    run_job(cmd, repo_root, log)
    assert f"checkpoint-{saved} (step {saved})" in log.read_text()
    assert read_state(tmp_path / "model")["global_step"] == saved + 2


def test_grpo_with_two_processes_keeps_the_one_process_schedule(sft_trained_dir, train_tables, tmp_path, repo_root):
    from .test_grpo import GRPO_CFG, PROMPTS

    stop = 2
    two = {**GRPO_CFG, "per_device_train_batch_size": 4, "num_processes": 2, "stop_steps": stop, "save_steps": 2,
           "resources": {"gpus": 0}}  # fmt: skip
    log = tmp_path / "two" / "train.log"
    cmd = train_command(
        "grpo2", two, init=str(sft_trained_dir), data=str(train_tables["rl"]), checkpoint_dir=str(tmp_path / "two" / "work"),
        out=str(tmp_path / "two" / "model"), log=str(log), prompts=PROMPTS, seed=0,
    )  # fmt: skip
    run_job(cmd, repo_root, log)
    one = {**two, "per_device_train_batch_size": 8, "num_processes": None}
    ref = train("grpo1", one, sft_trained_dir, train_tables["rl"], tmp_path / "one" / "work", tmp_path / "one" / "model",
                prompts=PROMPTS, seed=0)  # fmt: skip
    state, ref_state = read_state(tmp_path / "two" / "model"), read_state(ref)
    # 8 prompts x 4 generations = 32 completions: 4 steps per epoch of 8 completions either way.
    total = full_schedule_steps(8, 8, 1, 100, num_generations=4)
    assert total == full_schedule_steps(8, 4, 2, 100, num_generations=4) == 400
    assert state["max_steps"] == ref_state["max_steps"] == total and state["global_step"] == stop
    assert learning_rates(state) == learning_rates(ref_state) and sorted(learning_rates(state)) == [1, 2]
    assert epochs(state) == pytest.approx(epochs(ref_state)) and epochs(state)[1] == pytest.approx(0.25)
    assert json.loads((tmp_path / "two" / "model" / "run.json").read_text())["num_processes"] == 2
    files = {p.name for p in (tmp_path / "two" / "work" / f"checkpoint-{stop}").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= files
    assert log.read_text().count("final model written to") == 1
