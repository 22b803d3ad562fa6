"""The SLURM profile against a real cluster: GPU rules are submitted with --gpus, CPU rules without.

Runs the small workflow in tests/slurm/Snakefile through `--profile profiles/slurm` and reads SLURM's job records;
a two-node job shows how multi-node training is submitted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cluster import requested_gpus

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def load_profile(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "profiles" / name / "config.yaml").read_text())


def test_default_profile_does_not_shadow_the_slurm_profile():
    # Snakemake applies profiles/default on top of every --profile, key by key: a shared key would silently
    # replace the cluster setting (e.g. default-resources or latency-wait) in cluster runs.
    shared = set(load_profile("default")) & set(load_profile("slurm"))
    assert not shared, f"profiles/default overrides these profiles/slurm keys in cluster runs: {sorted(shared)}"


def test_slurm_profile_leaves_partition_and_account_to_the_user_and_passes_the_plugin_checks():
    profile = load_profile("slurm")
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] is True
    resources = profile["default-resources"]
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(resources)
    # The stop warning belongs to training alone: a default `--signal=TERM@600` would reach every job whose time
    # limit is 10 minutes or less as it starts.
    assert "--signal" not in str(resources.get("slurm_extra", "")), resources


@pytest.mark.slurm
def test_gpu_rule_gets_gpus_and_cpu_rule_does_not(slurm_snakemake, tmp_path):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    shutil.copy(HERE / "Snakefile", workdir / "Snakefile")

    proc = slurm_snakemake.run(workdir, timeout_s=300)
    assert proc.returncode == 0, proc.stdout[-4000:]

    # Inside the allocation the GPU job sees the GPU SLURM bound to it; the CPU job sees none.
    assert "CUDA_VISIBLE_DEVICES=0" in (workdir / "gpu.txt").read_text()
    assert "CUDA_VISIBLE_DEVICES=none" in (workdir / "cpu.txt").read_text()

    jobs = slurm_snakemake.cluster.jobs(workdir)
    by_rule = {job["rule"]: job for job in jobs if "rule" in job}
    assert set(by_rule) == {"gpu_step", "cpu_step"}, jobs
    assert all(job["JobState"] == "COMPLETED" for job in by_rule.values()), jobs
    assert requested_gpus(by_rule["gpu_step"]) == 1, by_rule["gpu_step"]
    assert requested_gpus(by_rule["cpu_step"]) == 0, by_rule["cpu_step"]
    # Resources from the rule reach sbatch: --mem 500 and -t 15 (minutes).
    assert by_rule["gpu_step"]["TimeLimit"] == "00:15:00"
    assert "mem=500M" in by_rule["cpu_step"]["TRES"]


@pytest.mark.slurm
def test_two_node_job_runs_one_process_per_node_with_its_gpu(slurm_snakemake, tmp_path):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    shutil.copy(HERE / "Snakefile", workdir / "Snakefile")

    proc = slurm_snakemake.run(workdir, "multinode.txt", timeout_s=300)
    assert proc.returncode == 0, proc.stdout[-4000:]

    lines = sorted((workdir / "multinode.txt").read_text().splitlines())
    nodes = slurm_snakemake.cluster.node_names
    assert lines == [f"rank={rank} node={node} gpus=0" for rank, node in enumerate(nodes)], lines
    (job,) = slurm_snakemake.cluster.jobs(workdir)
    assert job["JobState"] == "COMPLETED" and job["NumNodes"] == "2", job
    assert job.get("TresPerNode") == "gres:gpu:1", job
