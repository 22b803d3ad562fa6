"""Multi-node training as it would be submitted: the train rule's resources and shell command for a run with
``resources.nodes: 2`` (from a dry run with `--profile profiles/slurm`), turned into the sbatch line by the SLURM plugin.

No cluster is needed: this checks composition only, since a single machine cannot run a two-node job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = "SpatialReasoner-SFT"
NODES = 2


class Resources(dict):
    """Job resources the way the plugin reads them: ``.get(key)`` and attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


def parse_resources(text: str) -> Resources:
    resources = Resources()
    for item in text.split(", "):
        key, _, value = item.partition("=")
        resources[key] = int(value) if value.isdigit() else value
    return resources


def train_job_of_dry_run(output: str) -> dict:
    """The `rule train:` block of `snakemake -n -p` output: its fields plus the shell command line."""
    block, shell = {}, None
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "rule train:":
            for follow in lines[i + 1 :]:
                if follow.startswith("Shell command:"):
                    shell = follow.removeprefix("Shell command:").strip()
                    break
                key, _, value = follow.strip().partition(": ")
                block[key] = value
            break
    assert block and shell, f"no train job with a shell command in the dry run:\n{output[-3000:]}"
    block["shell"] = shell
    return block


@pytest.fixture(scope="module")
def multinode_train_job(tmp_path_factory):
    config = yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text())
    per_node = dict(config["runs"][RUN]["resources"])
    overlay = tmp_path_factory.mktemp("multinode") / "nodes.yaml"
    # Twice the GPUs at the same per-device batch: the run states the doubled global batch (24 x NODES) explicitly.
    run = config["runs"][RUN]
    doubled = run["per_device_train_batch_size"] * run["resources"]["gpus"] * NODES
    overlay.write_text(yaml.safe_dump({"runs": {RUN: {"resources": {"nodes": NODES}, "global_batch_size": doubled}}}))
    cmd = [
        *(sys.executable, "-m", "snakemake", f"results/models/{RUN}", "-n", "-p", "--forceall"),
        *("--profile", "profiles/slurm", "--configfile", "config/config.yaml", str(overlay)),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = train_job_of_dry_run(proc.stdout + proc.stderr)
    job["resources"] = parse_resources(job["resources"])
    job["threads"] = int(job.get("threads", 1))
    return job, per_node


def sbatch_line(job: dict) -> str:
    profile = yaml.safe_load((REPO_ROOT / "profiles/slurm/config.yaml").read_text())
    fake = SimpleNamespace(resources=job["resources"], threads=job["threads"], name="train", is_group=lambda: False)
    settings = SimpleNamespace(
        requeue=profile.get("slurm-requeue", False), no_requeue=False, qos=None, reservation=None
    )
    params = {
        "run_uuid": "run",
        "slurm_logfile": "slurm.log",
        "comment_str": "rule_train",
        "account": "",
        "partition": "",
        "workdir": str(REPO_ROOT),
    }
    return get_submit_command(fake, params, settings=settings) + set_gres_string(fake)


def test_multinode_shell_starts_one_launcher_per_node(multinode_train_job):
    job, per_node = multinode_train_job
    shell = job["shell"]
    assert shell.startswith(f"srun --nodes {NODES} --ntasks-per-node 1 "), shell
    assert f"--num_machines {NODES}" in shell and "--machine_rank $SLURM_NODEID" in shell, shell
    assert "--main_process_ip" in shell, shell


def test_multinode_sbatch_asks_for_every_node_and_its_gpus(multinode_train_job):
    job, per_node = multinode_train_job
    call = sbatch_line(job)
    assert f"--nodes={NODES}" in call, call
    assert f"-t {per_node['runtime']}" in call and f"--mem {per_node['mem_mb']}" in call, call
    assert f"--cpus-per-gpu={per_node['cpus_per_gpu']}" in call, call
    assert "--requeue" in call and "--signal=TERM@" in call, call
    # Every node needs its own GPUs: a per-node GRES request (a job total like --gpus=8 may be spread unevenly).
    per_node_gres = re.search(r"--gres=gpu(?::[\w.]+)?:(\d+)", call)
    assert per_node_gres and int(per_node_gres.group(1)) == per_node["gpus"], call
    assert "--gpus=" not in call, call
    # One launcher task per node.
    assert f"--ntasks={NODES}" in call and "--ntasks-per-gpu" not in call, call


def test_multinode_job_step_leaves_the_launch_to_the_rule(multinode_train_job):
    # Without an `mpi` resource the plugin wraps the job in its own one-task `srun -n1`, which holds the allocation,
    # so the rule's `srun --nodes N` could never start its per-node launchers.
    job, _ = multinode_train_job
    assert "mpi" in job["resources"], (
        f"the multi-node train job has no `mpi` resource, so the SLURM job step runs it inside `srun -n1`: "
        f"{dict(job['resources'])}"
    )


def test_single_node_training_keeps_the_plugins_job_step(tmp_path):
    # A one-node run is started by the plugin's `srun` job step, which is what receives the profile's
    # `--signal` warning (SLURM sends it to job steps, not to the batch shell).
    cmd = [
        *(sys.executable, "-m", "snakemake", f"results/models/{RUN}", "-n", "-p", "--forceall"),
        *("--profile", "profiles/slurm", "--configfile", "config/config.yaml"),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = train_job_of_dry_run(proc.stdout + proc.stderr)
    resources = parse_resources(job["resources"])
    assert "mpi" not in resources and resources.get("nodes", 1) == 1, resources
    assert (
        resources.get("gpu")
        == yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text())["runs"][RUN]["resources"]["gpus"]
    ), resources
