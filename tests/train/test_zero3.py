"""DeepSpeed ZeRO-3 on two CPU processes (``DS_ACCELERATOR=cpu``, gloo) through the job's own ``accelerate launch``
command with ``workflow/accelerate/zero3.yaml``: SFT with gradient checkpointing, GRPO with generation by
transformers (parameters gathered for every generation), resume from the ZeRO-3 shards after a kill, the final model
as a plain safetensors folder that transformers loads without DeepSpeed and the evaluation consumes, and ZeRO-3
against plain DDP from the same seed."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spatialreasoner.train.launch import train_command
from spatialreasoner.train.main import last_checkpoint

from .conftest import FAST_SFT, read_state
from .test_multiproc import job_env, killed_after_checkpoint_3, losses, max_weight_difference, run_job

# Each test starts 2-process jobs (a minute or two each on a quiet 2-core machine); a loaded machine needs longer.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ZERO3_FILE = "workflow/accelerate/zero3.yaml"
STOP = 6
#: 2 processes x 2 rows = 4 rows per step, checkpoints at steps 3 and 6, gradient checkpointing on (the paper's).
ZERO3 = {**FAST_SFT, "num_train_epochs": 10, "learning_rate": 1e-3, "save_steps": 3, "per_device_train_batch_size": 2,
         "num_processes": 2, "stop_steps": STOP, "gradient_checkpointing": True, "resources": {"gpus": 0},
         "accelerate_config": ZERO3_FILE}  # fmt: skip
#: The same run as plain DDP (torch's DistributedDataParallel over gloo, workflow/accelerate/cpu.yaml).
DDP = {k: v for k, v in ZERO3.items() if k != "accelerate_config"}


def launch_job(run: str, cfg: dict, init: Path, data: Path, root: Path, repo_root: Path, prompts=None) -> Path:
    log = root / "train.log"
    cmd = train_command(
        run, cfg, init=str(init), data=str(data), checkpoint_dir=str(root / "work"), out=str(root / "model"),
        log=str(log), prompts=prompts, seed=0,
    )  # fmt: skip
    run_job(cmd, repo_root, log)
    return log


@pytest.fixture(scope="module")
def zero3_sft(tiny_model_dir, train_tables, tmp_path_factory, repo_root) -> Path:
    """One 2-process ZeRO-3 SFT job (checkpoints 3 and 6) run through its shell command; its folder."""
    root = tmp_path_factory.mktemp("zero3")
    cmd = train_command("z", ZERO3, init="i", data="d", checkpoint_dir="w", out="o", log="l")
    assert "DS_ACCELERATOR=cpu" in cmd and f"--config_file {ZERO3_FILE} --num_processes 2 --mixed_precision no" in cmd
    launch_job("z", ZERO3, tiny_model_dir, train_tables["sft"], root, repo_root)
    return root


def zero_config_of(checkpoint: Path) -> dict:
    """The DeepSpeed config DeepSpeed itself stored with rank 0's shard of a checkpoint."""
    import torch

    (states,) = (checkpoint / f"global_step{read_state(checkpoint)['global_step']}").glob("*rank_0_*model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["ds_config"]


def test_zero3_sft_with_gradient_checkpointing_trains_on_two_cpu_processes(zero3_sft):
    state = read_state(zero3_sft / "model")
    assert state["global_step"] == STOP
    loss = losses(state)
    print("\nZeRO-3 SFT losses:", {s: round(v, 5) for s, v in loss.items()})
    assert sorted(loss) == list(range(1, STOP + 1)) and all(math.isfinite(v) for v in loss.values())
    # Decreasing: the last two steps below the first two by more than the steps' own spread.
    assert max(loss[5], loss[6]) < min(loss[1], loss[2]) - 0.1, loss
    for step in (3, 6):
        checkpoint = zero3_sft / "work" / f"checkpoint-{step}"
        shards = sorted(p.name for p in (checkpoint / f"global_step{step}").iterdir())
        # One shard of the weights and one of the optimizer states per process: ZeRO partitioned them.
        assert shards == [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")]
        ds = zero_config_of(checkpoint)
        assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 4, ds
    args = json.loads((zero3_sft / "model" / "run.json").read_text())
    assert args["num_processes"] == 2 and args["config"]["gradient_checkpointing"] is True
    text = (zero3_sft / "train.log").read_text()
    assert text.count("final model written to") == 1


#: Seconds the killed job runs between two looks at its checkpoint folder (it is stopped while the test looks); the
#: 3 steps and the checkpoint that follow checkpoint-3 take 1.5 s or more.
SLICE = 0.2


def job_groups(launcher: subprocess.Popen) -> tuple[list, set[int]]:
    """The processes of a job (psutil's) and their process groups: the launcher's (the test started it in a session
    of its own) and each rank's (torch's launcher starts every rank in a new session, outside its own group); a
    process a rank starts later is in the rank's group."""
    import psutil

    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    groups = set()
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(process.pid))
    return processes, groups


def signal_job(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)


def checkpoint_complete(work: Path, step: int, ranks: int = 2) -> bool:
    """checkpoint-<step> written to the end: the job's own resume takes it (``last_checkpoint``: its trainer state,
    which rank 0 writes last, is there), DeepSpeed's ``latest`` and every rank's shards are there (its save ends on a
    barrier of all ranks), and every rank's random state, which each rank writes after that barrier, loads."""
    import torch

    checkpoint = work / f"checkpoint-{step}"
    try:
        if last_checkpoint(work) != checkpoint or read_state(checkpoint)["global_step"] != step:
            return False
        if (checkpoint / "latest").read_text().strip() != f"global_step{step}":
            return False
        shards = sorted(p.name for p in (checkpoint / f"global_step{step}").iterdir())
        if shards != [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in range(ranks) for k in ("model", "optim")]:
            return False
        for rank in range(ranks):
            torch.load(checkpoint / f"rng_state_{rank}.pth", weights_only=False)
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):  # not there or unfinished
        return False
    return True


def sigkill_after_checkpoint(cmd: str, repo_root: Path, log: Path, work: Path, step: int) -> dict:
    """Start the job ``cmd`` and SIGKILL all its processes (launcher and both ranks) once checkpoint-<step> is complete.

    Once both ranks run, the job runs in slices of SLICE seconds and is stopped (SIGSTOP) while the test looks at its
    folder, so it dies one slice (one sleep of this process) after the checkpoint's completion at most, however fast
    or slowly it trains: after the save, in the next step, seconds before another checkpoint could be written."""
    import psutil

    proc = subprocess.Popen(["bash", "-c", cmd], cwd=repo_root, env=job_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    started, processes, groups, longest = time.time(), [], set(), 0.0
    try:
        # Both ranks exist (in their own sessions) once rank 0 has logged the process count.
        while "2 process(es)" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.time() < started + 900, log.read_text()[-3000:] if log.exists() else ""
            time.sleep(0.2)
        processes, groups = job_groups(proc)
        while True:
            resumed = time.time()
            time.sleep(SLICE)
            signal_job(groups, signal.SIGSTOP)
            longest = max(longest, time.time() - resumed)
            if checkpoint_complete(work, step):
                break
            assert proc.poll() is None and time.time() < started + 900, log.read_text()[-3000:]
            signal_job(groups, signal.SIGCONT)
    finally:
        # The stopped job at its checkpoint's completion, or what is left of a job that failed the test.
        if not groups:
            with contextlib.suppress(psutil.NoSuchProcess):
                processes, groups = job_groups(proc)
        signal_job(groups, signal.SIGKILL)
        proc.wait(timeout=60)
    # Every process of the job ended (the ranks are not children of this one: gone, or a zombie left to be reaped).
    deadline = time.time() + 60
    while alive := [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.time() < deadline, f"{alive} outlived SIGKILL"
        time.sleep(0.2)
    return {"returncode": proc.returncode, "processes": len(processes), "groups": len(groups),
            "seconds": time.time() - started, "longest_slice": longest}  # fmt: skip


def test_zero3_run_killed_after_a_checkpoint_resumes_from_its_shards(
    zero3_sft, tiny_model_dir, train_tables, tmp_path, repo_root
):
    log, work = tmp_path / "train.log", tmp_path / "work"
    cmd = train_command(
        "z", ZERO3, init=str(tiny_model_dir), data=str(train_tables["sft"]), checkpoint_dir=str(work),
        out=str(tmp_path / "model"), log=str(log), seed=0,
    )  # fmt: skip
    killed = sigkill_after_checkpoint(cmd, repo_root, log, work, step=3)
    text = log.read_text()
    landed = "after step 4's log line" if re.search(r"step 4/\d+: loss=", text) else "before step 4 ended"
    print(f"\nSIGKILL {killed['seconds']:.1f} s after the start, {landed}, to {killed['processes']} processes in "
          f"{killed['groups']} groups; the job ran {killed['longest_slice']:.2f} s at most between two looks")  # fmt: skip
    # Killed, not stopped: the launcher and both ranks (3 groups), no signal checkpoint, nothing after checkpoint-3.
    assert killed["returncode"] == -signal.SIGKILL and killed["groups"] == 3, killed
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]
    assert not (tmp_path / "model").exists() and "final model written to" not in text
    assert "received SIGTERM" not in text and "training stopped" not in text
    assert not re.search(r"step [5-9]/\d+: loss=", text), text[-3000:]
    killed_at = len(text)

    log = launch_job("z", ZERO3, tiny_model_dir, train_tables["sft"], tmp_path, repo_root)
    resumed_text = log.read_text()[killed_at:]
    assert "resuming from" in resumed_text and "checkpoint-3 (step 3)" in resumed_text, resumed_text[-3000:]
    ref, resumed = losses(read_state(zero3_sft / "model")), losses(read_state(tmp_path / "model"))
    print("ZeRO-3 losses, uninterrupted / killed and resumed:", {s: (ref[s], resumed[s]) for s in range(1, 7)})
    assert sorted(resumed) == list(range(1, STOP + 1))  # steps 1-3 from the killed run's checkpoint-3
    # Same seed, same rows per rank, same fp32 arithmetic in the same order: only the restored state could differ.
    # Step 4 needs the weights back, steps 5-6 also Adam's moments (a fresh optimizer changes them by ~1e-2).
    for step in range(1, STOP + 1):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (step, ref, resumed)
    weights = max_weight_difference(tmp_path / "model", zero3_sft / "model")
    moved = max_weight_difference(zero3_sft / "model", zero3_sft / "work" / "checkpoint-3")
    print(f"final weights: max |resumed - uninterrupted| {weights:.3g}; moved by steps 4-6: {moved:.3g}")
    assert moved > 1e-4 and weights < 1e-6


def write_benchmark(path: Path, n: int):
    """A small 3DSRBench-style TSV in VLMEvalKit's layout (base64 PNG images)."""
    import base64
    import io

    import pandas as pd
    from PIL import Image

    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (60 * i % 255, 120, 200)).save(buf, format="PNG")
        rows.append({"index": i, "qid": f"q{i // 2}" + ("-1" if i % 2 else ""), "question": "Is the red cube higher?",
                     "A": "yes", "B": "no", "answer": "A", "category": "height_higher",
                     "image": base64.b64encode(buf.getvalue()).decode()})  # fmt: skip
    df = pd.DataFrame(rows)
    df.to_csv(path, sep="\t", index=False)
    return df


BLOCKED_DEEPSPEED = """
import json, sys
sys.modules["deepspeed"] = None  # any import of DeepSpeed fails: the folder must not need it
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from spatialreasoner.evaluate.infer import run_inference
from spatialreasoner.evaluate.score import score_file
model_dir, bench, out, dump = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(model_dir)
AutoProcessor.from_pretrained(model_dir)
torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, dump)
run_inference(model_dir, bench, out + "/predictions.parquet", max_new_tokens=8, batch_size=2)
summary = score_file(out + "/predictions.parquet", "3DSRBench", out + "/scores", reference=bench)
print(json.dumps({"rows": summary["rows"], "deepspeed_imported": "deepspeed" in sys.modules and
                  sys.modules["deepspeed"] is not None}))
"""


def test_zero3_final_model_holds_consolidated_weights_that_load_and_evaluate_without_deepspeed(zero3_sft, tmp_path):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model = zero3_sft / "model"
    files = {p.name for p in model.iterdir()}
    assert {"model.safetensors", "config.json", "chat_template.jinja", "tokenizer.json", "processor_config.json",
            "run.json"} <= files  # fmt: skip
    assert not [f for f in files if f.startswith(("global_step", "zero_", "rng_state", "latest", "optimizer"))]
    bench = write_benchmark(tmp_path / "bench.tsv", n=4)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_DEEPSPEED, str(model), str(tmp_path / "bench.tsv"), str(tmp_path),
         str(tmp_path / "weights.pt")], capture_output=True, text=True, env=job_env(), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rows": len(bench), "deepspeed_imported": False}
    loaded = torch.load(tmp_path / "weights.pt")
    # DeepSpeed's own reconstruction of the full fp32 weights from the two ranks' shards of the last checkpoint.
    shards = get_fp32_state_dict_from_zero_checkpoint(str(zero3_sft / "work" / f"checkpoint-{STOP}"))
    assert set(shards) <= set(loaded) and len(shards) > 10
    worst = max((loaded[k].double() - shards[k].double()).abs().max().item() for k in shards)
    # fp32 training on the CPU: the consolidated "16-bit" save writes the parameters' own dtype, here float32.
    assert {str(v.dtype) for v in loaded.values()} == {"torch.float32"}
    assert worst == 0.0, worst
    initial = max_weight_difference(model, zero3_sft / "work" / "checkpoint-3")
    assert initial > 1e-4  # the weights are the trained ones, not a copy of an earlier state


def test_zero3_and_ddp_from_the_same_seed_train_the_same_model(zero3_sft, tiny_model_dir, train_tables, tmp_path,
                                                                repo_root):  # fmt: skip
    launch_job("d", DDP, tiny_model_dir, train_tables["sft"], tmp_path, repo_root)
    zero, ddp = losses(read_state(zero3_sft / "model")), losses(read_state(tmp_path / "model"))
    rel = {s: abs(zero[s] - ddp[s]) / abs(ddp[s]) for s in ddp}
    weights = max_weight_difference(zero3_sft / "model", tmp_path / "model")
    moved = max_weight_difference(tmp_path / "model", tiny_model_dir)
    print("\nZeRO-3 vs DDP loss per step (ZeRO-3 / DDP / relative difference):")
    for s in sorted(ddp):
        print(f"  step {s}: {zero[s]:.6f} / {ddp[s]:.6f} / {rel[s]:.2e}")
    print(f"final weights: max |ZeRO-3 - DDP| {weights:.3g}; moved from the initial model by {moved:.3g}")
    assert sorted(zero) == sorted(ddp) == list(range(1, STOP + 1))
    # Step 1: the same weights and rows, so the same loss up to fp32 rounding of the sharded forward.
    assert rel[1] < 1e-6
    # Later steps: the same mathematics; only the order of the fp32 sums (reduce-scatter of gradient shards against
    # DDP's all-reduce buckets, the gradient norm summed per shard) differs, which is ~1e-7 relative per step.
    assert max(rel.values()) < 1e-4, rel
    assert weights < 1e-2 * moved, (weights, moved)


def test_zero3_grpo_generates_with_gathered_weights(sft_trained_dir, train_tables, tmp_path, repo_root):
    from .test_grpo import GRPO_CFG, PROMPTS

    cfg = {**GRPO_CFG, "per_device_train_batch_size": 4, "num_processes": 2, "stop_steps": 2, "save_steps": 2,
           "gradient_checkpointing": True, "resources": {"gpus": 0}, "accelerate_config": ZERO3_FILE}  # fmt: skip
    log = launch_job("g", cfg, sft_trained_dir, train_tables["rl"], tmp_path, repo_root, prompts=PROMPTS)
    state = read_state(tmp_path / "model")
    steps = [h for h in state["log_history"] if "loss" in h]
    print("\nZeRO-3 GRPO steps:", [{k: h[k] for k in ("step", "loss", "reward", "completions/mean_length")}
                                    for h in steps])  # fmt: skip
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert math.isfinite(h["loss"]) and math.isfinite(h["reward"]) and math.isfinite(h["grad_norm"])
        # Completions were generated (a rank generating from its parameter shard alone could not run at all) and
        # the SFT-taught format earns rewards.
        assert h["completions/mean_length"] > 0 and h["reward"] > 0
    ds = zero_config_of(tmp_path / "work" / "checkpoint-2")
    assert ds["zero_optimization"]["stage"] == 3
    assert "final model written to" in log.read_text()


def test_zero3_shards_are_not_resumed_on_another_process_count(zero3_sft, tiny_model_dir, train_tables, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    from spatialreasoner.errors import ConfigError
    from spatialreasoner.train.main import train

    # One process as `accelerate launch` with the ZeRO-3 file would start it; the job stops before any training.
    for key, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                       "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true", "ACCELERATE_MIXED_PRECISION": "no"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    work = killed_after_checkpoint_3(zero3_sft, tmp_path)
    one = {**ZERO3, "per_device_train_batch_size": 4, "num_processes": 1}
    with pytest.raises(ConfigError) as err:
        train("z", one, tiny_model_dir, train_tables["sft"], work, tmp_path / "model", seed=0)
    message = str(err.value)
    aside = work.with_name("work.weights-only")
    assert "its ZeRO-3 shards are split over 2 process(es); this job has 1" in message, message
    assert f"mv {work} {aside}" in message and f"--init {aside / 'checkpoint-3'}" in message
    assert f"{aside / 'checkpoint-3' / 'zero_to_fp32.py'} {aside / 'checkpoint-3'}" in message
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-3", "run_config.json", "schedule.json"]

    # Without DeepSpeed the same checkpoint is refused as well (DDP would find no weights it can resume).
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ConfigError, match=r"it was trained with DeepSpeed ZeRO-3; this job trains without DeepSpeed"):
        train(
            "z", {**one, "accelerate_config": None}, tiny_model_dir, train_tables["sft"], work, tmp_path / "m", seed=0
        )
