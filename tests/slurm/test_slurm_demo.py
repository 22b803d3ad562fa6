"""The demo's DAG end to end through a real SLURM cluster with `--profile profiles/slurm`.

This proves dispatch, resources and requeue, not learning: the demo config runs with `slurm-overlay.yaml` beside
this file, which keeps every rule of the DAG (data, three training runs, checkpoint evaluation, tables, plots, report)
but shrinks the data and step counts. Inference asks for one (fake) GPU through `evaluate.resources`; training
through `--set-resources`, because a run configured with GPUs launches DeepSpeed on GPUs
(tests/slurm/test_multinode_submit.py checks that the train rule takes its GPUs from the run's config). The first
training job is killed with SIGTERM after its first checkpoint, as the time-limit warning (`--signal`) or a
preemption would, and the retried job must resume.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster import requested_gpus

from spatialreasoner.config import merge_configs

# The shrunk demo runs in the first test's fixture; allow it more than the suite's default per-test limit.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]
OVERLAY = Path(__file__).resolve().parent / "slurm-overlay.yaml"

# The rules that run on GPUs in a real reproduction; every other rule must be submitted without GPUs.
GPU_RULES = {"train", "infer"}
KILLED_RUN = "SpatialReasoner-SFT"


def first_checkpoint(workdir: Path) -> Path | None:
    done = [
        d
        for d in (workdir / "results/checkpoints" / KILLED_RUN).glob("checkpoint-*")
        if (d / "trainer_state.json").is_file()
    ]
    return min(done, key=lambda d: int(d.name.split("-")[1])) if done else None


def run_demo_killing_training(slurm_snakemake, workdir: Path) -> dict:
    """Run the demo in ``workdir`` through SLURM; SIGTERM the first training job once its first checkpoint exists
    and let the profile's retries resubmit it."""
    demo = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    assert KILLED_RUN in demo["runs"], f"the demo config has no run {KILLED_RUN}"
    overlay = yaml.safe_load(OVERLAY.read_text())
    assert overlay["evaluate"]["resources"]["gpus"] == 1, "inference must ask SLURM for a GPU"
    assert overlay["runs"][KILLED_RUN]["save_steps"] < overlay["runs"][KILLED_RUN]["stop_steps"] // 4
    demo = merge_configs(demo, overlay)
    cluster = slurm_snakemake.cluster
    args = (
        "--configfile",
        "config/demo.yaml",
        str(OVERLAY),
        "--set-resources",
        "train:gpu=1",
        "train:cpus_per_gpu=1",
    )

    dry = slurm_snakemake.run(workdir, *args, "-n", timeout_s=120)
    assert dry.returncode == 0, f"the demo DAG does not resolve:\n{dry.stdout[-4000:]}"

    proc = slurm_snakemake.popen(workdir, *args, timeout_s=1500)
    killed = None
    try:
        deadline = time.monotonic() + 1200
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            checkpoint = first_checkpoint(workdir)
            running = [
                job
                for job in cluster.jobs(workdir)
                if job.get("rule") == "train" and KILLED_RUN in job.get("Comment", "") and job["JobState"] == "RUNNING"
            ]
            if checkpoint is not None and running:
                # All job steps get the signal (not the batch shell): what `--signal=TERM@600` does before the limit.
                cluster.run("scancel", "--signal=TERM", running[0]["JobId"])
                killed = {"job": running[0]["JobId"], "checkpoint": checkpoint}
            time.sleep(0.5)
        proc.wait(timeout=1560)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (workdir / "snakemake.out").read_text()
    return {"workdir": workdir, "demo": demo, "rc": proc.returncode, "output": output, "killed": killed}


@pytest.fixture(scope="module")
def demo_through_slurm(slurm_snakemake, tmp_path_factory, copy_checkout):
    return run_demo_killing_training(slurm_snakemake, copy_checkout(tmp_path_factory.mktemp("slurm-demo")))


def failed_job_logs(workdir: Path, limit: int = 2) -> str:
    """The ends of the first failed jobs' SLURM logs: where a job's own error shows (the workflow log only says FAILED)."""
    logs = sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"), key=lambda f: f.stat().st_mtime)
    failed = [f for f in logs if "Error in rule" in f.read_text(errors="replace")][:limit]
    return "\n".join(f"--- {f.relative_to(workdir)} ---\n{f.read_text(errors='replace')[-2500:]}" for f in failed)


def test_demo_writes_tables_through_slurm(demo_through_slurm):
    run = demo_through_slurm
    assert run["rc"] == 0, run["output"][-4000:] + "\n" + failed_job_logs(run["workdir"])
    tables = run["workdir"] / "results/tables"
    for bench in ("3DSRBench", "CV-Bench-3D"):
        table = pd.read_csv(tables / f"{bench}.csv")
        assert set(run["demo"]["evaluate"]["models"]) <= set(table["model"]), table
    assert (tables / "summary.md").is_file()


def test_gpu_rules_got_gpus_and_cpu_rules_did_not(demo_through_slurm, slurm_cluster):
    jobs = slurm_cluster.jobs(demo_through_slurm["workdir"])
    rules = {job.get("rule") for job in jobs}
    assert rules >= GPU_RULES, f"no SLURM record of {GPU_RULES - rules}; jobs: {sorted(map(str, rules))}"
    assert len(rules) > len(GPU_RULES), "no CPU rule went through SLURM"
    wrong = [
        (job["JobId"], job["rule"], requested_gpus(job))
        for job in jobs
        if requested_gpus(job) != (1 if job["rule"] in GPU_RULES else 0)
    ]
    assert not wrong, f"jobs with the wrong GPU request (id, rule, gpus): {wrong}"


def test_killed_training_resumed_from_its_checkpoint(demo_through_slurm, slurm_cluster):
    run = demo_through_slurm
    killed = run["killed"]
    assert killed is not None, "the training job finished or never ran before a checkpoint appeared to kill it after"
    first_step = int(killed["checkpoint"].name.split("-")[1])
    stop = run["demo"]["runs"][KILLED_RUN]["stop_steps"]

    jobs = [j for j in slurm_cluster.jobs(run["workdir"]) if j.get("rule") == "train" and KILLED_RUN in j["Comment"]]
    states = {j["JobId"]: j["JobState"] for j in jobs}
    assert states[killed["job"]] != "COMPLETED", states
    assert "COMPLETED" in {s for jid, s in states.items() if int(jid) > int(killed["job"])}, states

    # The killed job's SLURM log (the plugin keeps those of failed jobs) shows the trainer saving on the signal ...
    slurm_log = run["workdir"] / ".snakemake/slurm_logs/rule_train" / KILLED_RUN / f"{killed['job']}.log"
    killed_output = slurm_log.read_text()
    assert "received SIGTERM" in killed_output, killed_output[-3000:]
    saved = re.search(r"saving checkpoint-(\d+) and stopping because the job was told to stop", killed_output)
    assert saved, killed_output[-3000:]
    saved_step = int(saved.group(1))
    assert first_step <= saved_step < stop, (first_step, saved_step, stop)
    # ... and the log of the retried job shows it resuming from exactly that checkpoint.
    log = (run["workdir"] / "logs/train" / f"{KILLED_RUN}.log").read_text()
    resumed = re.findall(r"resuming from \S*checkpoint-(\d+) \(step (\d+)\)", log)
    assert resumed, f"the retried job did not resume from a checkpoint:\n{log[-3000:]}"
    assert resumed[0] == (str(saved_step), str(saved_step)), (resumed, saved_step)
    assert (run["workdir"] / "results/models" / KILLED_RUN / "trainer_state.json").is_file()
