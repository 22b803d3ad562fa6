"""A run killed after a checkpoint resumes from it with its weights, continuing the same training; SIGTERM / SLURM's
warning signal save a checkpoint first; a checkpoint whose weights do not match the model stops the job."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from spatialreasoner.train.main import last_checkpoint, train

from .conftest import FAST_SFT, read_state

STOP = 150


class RecordStart(TrainerCallback):
    """Remembers the global step at which trainer.train() begins (the resumed step)."""

    start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


def launch(tiny_model_dir, table, tmp_path: Path, cfg: dict) -> tuple[subprocess.Popen, Path]:
    """Start ``spatialreasoner train`` as its own process, as the workflow rule does on CPU."""
    log = tmp_path / "train.log"
    cmd = [
        sys.executable, "-m", "spatialreasoner.cli", "train",
        "--run-name", "killed", "--run-config", json.dumps(cfg),
        "--init", str(tiny_model_dir), "--data", str(table),
        "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--seed", "0",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with code {proc.returncode}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def resume_and_finish(tiny_model_dir, table, tmp_path: Path, cfg: dict) -> int:
    recorder = RecordStart()
    out = train(
        "killed", cfg, tiny_model_dir, table, tmp_path / "work", tmp_path / "model", seed=0, extra_callbacks=[recorder]
    )
    assert read_state(out)["global_step"] == STOP
    return recorder.start_step


class RecordLogs(RecordStart):
    """The logged metrics of each step (loss, grad_norm, reward...), by global step."""

    def __init__(self):
        self.logs = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs[state.global_step] = dict(logs)


#: Runs ``train`` in its own process and SIGKILLs that process right after it has written checkpoint-<step>: the
#: state a node failure, an out-of-memory kill or a time limit without warning leaves behind.
KILL_AFTER_SAVE = """
import json, os, signal, sys
from transformers import TrainerCallback
from spatialreasoner.train.main import train

step, cfg, init, data, work, out, prompts = sys.argv[1:]

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)

train("same", json.loads(cfg), init, data, work, out, prompts=json.loads(prompts), seed=0,
      extra_callbacks=[KillAfterSave()])
"""


def train_killed_after_checkpoint(step: int, cfg: dict, init, data, work: Path, out: Path, prompts=None) -> None:
    args = [str(step), json.dumps(cfg), str(init), str(data), str(work), str(out), json.dumps(prompts or {})]
    log = work.parent / "killed.log"
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *args], stdout=fh, stderr=subprocess.STDOUT)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert not out.exists()
    assert last_checkpoint(work) == work / f"checkpoint-{step}"


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def assert_resume_continues_the_same_training(init, data, tmp_path: Path, cfg: dict, compared: tuple, prompts=None):
    """An uninterrupted run and a run killed after checkpoint-2 then resumed (same seed) match at steps 3 and 4 and
    in their final weights; the logged figures of both runs are written to ``losses.json`` in ``tmp_path``."""
    reference = RecordLogs()
    ref_out = train(
        "same", cfg, init, data, tmp_path / "ref" / "work", tmp_path / "ref" / "model", prompts=prompts, seed=0,
        extra_callbacks=[reference],
    )  # fmt: skip
    work, out = tmp_path / "killed" / "work", tmp_path / "killed" / "model"
    work.mkdir(parents=True)
    train_killed_after_checkpoint(2, cfg, init, data, work, out, prompts)
    resumed = RecordLogs()
    train("same", cfg, init, data, work, out, prompts=prompts, seed=0, extra_callbacks=[resumed])
    figures = {"reference": reference.logs, "resumed": resumed.logs}
    (tmp_path / "losses.json").write_text(json.dumps(figures, indent=1, default=str))
    # Shown with `pytest -s`: the figures the README quotes.
    print(f"\n{cfg['stage']} killed after checkpoint-2, resumed; {', '.join(compared)} per step (reference / resumed):")
    for step in sorted(reference.logs):
        cells = [
            f"{reference.logs[step][k]:.6g} / {resumed.logs.get(step, {}).get(k, float('nan')):.6g}" for k in compared
        ]
        print(f"  step {step}: " + "; ".join(cells))

    assert resumed.start_step == 2
    assert sorted(resumed.logs) == [3, 4]
    for key in compared:
        for step in (3, 4):
            assert resumed.logs[step][key] == pytest.approx(reference.logs[step][key], rel=1e-4, abs=1e-6), (
                key, step, figures,
            )  # fmt: skip
    # The runs moved away from their initial weights, so equal final weights mean the same training, not none.
    assert max_weight_difference(ref_out, init) > 1e-4
    assert max_weight_difference(out, ref_out) < 1e-5
    assert read_state(out)["global_step"] == read_state(ref_out)["global_step"] == 4


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_continues_the_same_training(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": 4, "save_steps": 2}
    assert_resume_continues_the_same_training(
        tiny_model_dir, train_tables["sft"], tmp_path, cfg, compared=("loss", "grad_norm", "learning_rate")
    )


@pytest.mark.slow
def test_grpo_killed_after_a_checkpoint_continues_the_same_training(sft_trained_dir, train_tables, tmp_path):
    from .test_grpo import GRPO_CFG, PROMPTS

    # No warmup and a larger learning rate: two steps then move the weights enough to change what step 3 samples.
    cfg = {**GRPO_CFG, "stop_steps": 4, "save_steps": 2, "warmup_ratio": 0.0, "learning_rate": 1e-3}
    assert_resume_continues_the_same_training(
        sft_trained_dir, train_tables["rl"], tmp_path, cfg, compared=("loss", "grad_norm", "reward"), prompts=PROMPTS
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_then_the_rerun_resumes(tiny_model_dir, train_tables, tmp_path, sig):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": STOP, "save_steps": 1000}
    proc, log = launch(tiny_model_dir, train_tables["sft"], tmp_path, cfg)
    wait_for(lambda: "'loss'" in log.read_text(), proc)  # training has started
    proc.send_signal(sig)
    proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 2, text[-2000:]
    assert f"received {signal.Signals(sig).name}" in text and "rerun to resume" in text
    checkpoint = last_checkpoint(tmp_path / "work")
    assert checkpoint is not None, "no checkpoint saved on the signal"
    saved_step = read_state(checkpoint)["global_step"]
    assert 0 < saved_step < STOP
    assert not (tmp_path / "model").exists()

    assert resume_and_finish(tiny_model_dir, train_tables["sft"], tmp_path, cfg) == saved_step


def test_rerun_after_finishing_only_writes_the_final_model(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "stop_steps": 3}
    first = train("again", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0)
    weights = (first / "model.safetensors").read_bytes()
    shutil.rmtree(first)  # as Snakemake does with a declared output before rerunning a job
    recorder = RecordStart()
    again = train(
        "again", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0,
        extra_callbacks=[recorder],
    )  # fmt: skip
    assert recorder.start_step is None  # no training at all: checkpoint-3 already reached stop_steps
    assert (again / "model.safetensors").read_bytes() == weights


def test_a_changed_run_config_sets_old_checkpoints_aside(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "stop_steps": 3}
    work, out = tmp_path / "work", tmp_path / "model"
    train("changed", cfg, tiny_model_dir, train_tables["sft"], work, out, seed=0)
    shutil.rmtree(out)
    recorder = RecordStart()
    changed = {**cfg, "learning_rate": cfg["learning_rate"] / 2}
    train("changed", changed, tiny_model_dir, train_tables["sft"], work, out, seed=0, extra_callbacks=[recorder])
    assert recorder.start_step == 0  # trained afresh, not resumed from checkpoint-3 of the other config
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("work.stale-")]
    assert len(stale) == 1 and (stale[0] / "checkpoint-3").is_dir()
    assert json.loads((work / "run_config.json").read_text())["learning_rate"] == changed["learning_rate"]
    assert read_state(out)["global_step"] == 3


def test_a_changed_save_or_log_setting_keeps_the_checkpoints(tiny_model_dir, train_tables, tmp_path):
    cfg = {**FAST_SFT, "num_train_epochs": 100, "stop_steps": 4, "save_steps": 2}
    work, out = tmp_path / "work", tmp_path / "model"
    train("kept", {**cfg, "stop_steps": 2}, tiny_model_dir, train_tables["sft"], work, out, seed=0)
    shutil.rmtree(out)
    recorder = RecordStart()
    # stop_steps, save_steps and logging_steps differ; the training trajectory does not.
    changed = {**cfg, "save_steps": 1, "logging_steps": 2}
    train("kept", changed, tiny_model_dir, train_tables["sft"], work, out, seed=0, extra_callbacks=[recorder])
    assert recorder.start_step == 2
    assert not [p for p in tmp_path.iterdir() if ".stale-" in p.name]


# --- weights of a checkpoint, key by key ------------------------------------------------------------------------------

SAVED_KEY = "model.layers.1.mlp.up_proj.weight"  # as a checkpoint names it; in memory model.language_model.layers...


def damaged_copy(folder: Path, dest: Path, damage: str) -> tuple[Path, str, str]:
    """A copy of a model folder whose weights lack a key, hold one the model has not, or hold one of another shape;
    returns the folder, the key an error must name and the kind of problem it must say."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dest)
    weights = load_file(dest / "model.safetensors")
    if damage == "missing":
        del weights[SAVED_KEY]
        named, kind = "layers.1.mlp.up_proj.weight", "missing"
    elif damage == "unused":
        weights["model.layers.7.mlp.up_proj.weight"] = weights[SAVED_KEY].clone()
        named, kind = "layers.7.mlp.up_proj.weight", "unused"
    else:
        weights["model.norm.weight"] = torch.zeros(3)
        named, kind = "norm.weight", "wrong shape"
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest, named, kind


def test_checkpoint_weights_saved_under_other_names_are_restored(tiny_model_dir, tmp_path):
    import torch
    from safetensors import safe_open

    from spatialreasoner.modeling import load_model
    from spatialreasoner.train.resume import load_checkpoint_weights

    trained = load_model(tiny_model_dir)
    with torch.no_grad():
        for i, p in enumerate(trained.parameters()):
            p.add_(0.01 * (i + 1))
    trained.save_pretrained(tmp_path / "checkpoint-7")
    with safe_open(tmp_path / "checkpoint-7" / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    names = set(trained.state_dict())
    assert SAVED_KEY in saved and SAVED_KEY not in names  # why the Trainer's plain load_state_dict matches nothing

    model = load_model(tiny_model_dir)
    load_checkpoint_weights(model, tmp_path / "checkpoint-7")
    expected = trained.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("damage", ["missing", "unused", "shape"])
def test_a_checkpoint_that_does_not_match_the_model_is_refused_whole(tiny_model_dir, tmp_path, damage):
    import torch

    from spatialreasoner.errors import DataError
    from spatialreasoner.modeling import load_model
    from spatialreasoner.train.resume import load_checkpoint_weights

    checkpoint, named, kind = damaged_copy(tiny_model_dir, tmp_path / "checkpoint-3", damage)
    model = load_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError) as caught:
        load_checkpoint_weights(model, checkpoint)
    message = str(caught.value)
    assert f"checkpoint {checkpoint}" in message and named in message and f"{kind}:" in message, message
    for name, value in model.state_dict().items():  # nothing copied from a refused checkpoint
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("damage", ["missing", "unused", "shape"])
def test_a_model_folder_whose_weights_do_not_match_is_refused(tiny_model_dir, tmp_path, damage):
    from spatialreasoner.errors import DataError
    from spatialreasoner.modeling import load_model

    folder, named, kind = damaged_copy(tiny_model_dir, tmp_path / "model", damage)
    with pytest.raises(DataError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert f"model folder {folder}" in message and named in message and f"{kind}:" in message, message


def test_training_stops_at_a_checkpoint_that_does_not_match(tiny_model_dir, train_tables, tmp_path):
    from spatialreasoner.errors import DataError

    work, out = tmp_path / "work", tmp_path / "model"
    work.mkdir()
    checkpoint, named, _ = damaged_copy(tiny_model_dir, work / "checkpoint-1", "missing")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    cfg = {**FAST_SFT, "stop_steps": 3}
    with pytest.raises(DataError, match=f"checkpoint {checkpoint} does not match") as caught:
        train("damaged", cfg, tiny_model_dir, train_tables["sft"], work, out, seed=0)
    assert named in str(caught.value)
    assert not out.exists()
    assert not (work / "checkpoint-2").exists()
