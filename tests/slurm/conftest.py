"""Fixtures for the SLURM tests: a real cluster on this machine started once per session (skipped with the reason when
this machine cannot host one), and a runner for snakemake through it with the project's SLURM profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import ClusterUnavailable, SlurmCluster, install, unavailable_reason  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm"
TEST_PROFILE = Path(__file__).resolve().parent / "profile"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running two-node SLURM cluster (both nodes on this host, 2 fake GPUs each); only its daemons are stopped."""
    reason = unavailable_reason()
    if reason is None:
        try:
            install()
        except ClusterUnavailable as exc:
            reason = str(exc)
    if reason:
        print(f"SLURM tests skipped: {reason}", file=sys.stderr)
        pytest.skip(f"cannot host a SLURM test cluster: {reason}")
    # Not under pytest's tmp dirs: those are private to root, and munged runs as user munge.
    root = Path(tempfile.mkdtemp(prefix="slurm-test-cluster-"))
    cluster = SlurmCluster(root, nodes=2, gpus=2)
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot host a SLURM test cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


class SlurmSnakemake:
    """Runs snakemake with `--profile profiles/slurm --profile tests/slurm/profile` against the test cluster."""

    def __init__(self, cluster: SlurmCluster) -> None:
        self.cluster = cluster

    def env(self) -> dict[str, str]:
        # sbatch exports this environment to the jobs: the cluster, this venv first on PATH, and an offline Hub.
        env = self.cluster.env()
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env["PATH"]])
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        env.pop("SNAKEMAKE_PROFILE", None)
        return env

    def cmd(self, *args: str, timeout_s: int) -> list[str]:
        # snakemake stops at once on SIGINT (SIGTERM waits for running jobs); -k kills it if that hangs.
        return [
            "timeout", "-s", "INT", "-k", "30", str(timeout_s),
            str(VENV_BIN / "snakemake"), "--profile", str(SLURM_PROFILE), "--profile", str(TEST_PROFILE), *args,
        ]  # fmt: skip

    def popen(self, workdir: Path, *args: str, timeout_s: int = 600) -> subprocess.Popen:
        # The child keeps its own copy of the file descriptor; ours can close at once.
        with open(workdir / "snakemake.out", "a") as out:
            return subprocess.Popen(
                self.cmd(*args, timeout_s=timeout_s), cwd=workdir, env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )

    def run(self, workdir: Path, *args: str, timeout_s: int = 600) -> subprocess.CompletedProcess:
        proc = self.popen(workdir, *args, timeout_s=timeout_s)
        proc.wait()
        output = (workdir / "snakemake.out").read_text()
        return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")


@pytest.fixture(scope="session")
def slurm_snakemake(slurm_cluster) -> SlurmSnakemake:
    return SlurmSnakemake(slurm_cluster)
