"""The per-rule conda environments build where Snakemake copies them (`.snakemake/conda/<hash>.yaml`), from the locks,
with the working directory outside the repository (`--directory`), and a data rule then runs inside its environment.

No conda channel is reachable here, so Snakemake's own env creation (`--sdm conda`) drives `conda_standin.py`: a
stand-in for conda that makes a venv of the pinned Python and pip and treats the env file's `pip:` section exactly as
conda does (a requirements file written beside the copied env file, `pip install -U -r` run from that folder).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spatialreasoner.conda_envs import check_conda_envs
from spatialreasoner.errors import ConfigError

from .test_locks import norm, read_lock

HERE = Path(__file__).resolve().parent


def standin_path(tmp: Path) -> str:
    """A PATH whose `conda` is the stand-in, with the system's tools and without this test environment's bin/."""
    bindir = tmp / "standin-bin"
    bindir.mkdir(exist_ok=True)
    conda = bindir / "conda"
    conda.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "conda_standin.py"}" "$@"\n')
    conda.chmod(0o755)
    return os.pathsep.join([str(bindir), "/usr/local/bin", "/usr/bin", "/bin"])


def python_candidates() -> list[str]:
    """Interpreters the stand-in may use for the env files' pinned Python: this test environment's own base first."""
    return [p for p in (getattr(sys, "_base_executable", ""), shutil.which("python3.11")) if p]


def snakemake(repo: Path, workdir: Path, tmp: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPATIALREASONER_", "VIRTUAL_ENV", "PIP_"))}
    env.update(
        PATH=standin_path(tmp),
        CONDA_STANDIN_BASE=str(tmp / "standin-base"),
        HF_HUB_OFFLINE="1",
        CONDA_STANDIN_PYTHONS=os.pathsep.join(python_candidates()),
    )
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        *args,
        "-s",
        str(repo / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(repo / "config" / "demo.yaml"),
        "--cores",
        "1",
        "--sdm",
        "conda",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_env(tmp_path_factory, copy_checkout):
    """The data environment, created by Snakemake in a working directory outside a copy of the repository."""
    tmp = tmp_path_factory.mktemp("conda-envs")
    repo = copy_checkout(tmp / "repo")
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    proc = snakemake(repo, workdir, tmp, "--conda-create-envs-only", "synthesize")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    envs = [p for p in (workdir / ".snakemake" / "conda").iterdir() if p.is_dir()]
    return repo, workdir, tmp, envs


@pytest.mark.slow
def test_the_data_environment_is_the_data_lock(data_env):
    repo, _, _, envs = data_env
    assert len(envs) == 1, envs
    python = envs[0] / "bin" / "python"
    out = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import distributions as d\nfor x in d(): print(x.metadata['Name'], x.version)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    have = dict(line.split(" ", 1) for line in out.splitlines())
    have = {norm(k): v for k, v in have.items()}
    want = read_lock(repo / "locks" / "py3.11" / "data.txt")
    assert {n: (v, have.get(n)) for n, v in want.items() if have.get(n) != v} == {}
    # the post-deploy script installed this package (editable) from the repository, not from the working directory
    where = subprocess.run(
        [str(python), "-c", "import spatialreasoner; print(spatialreasoner.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(repo.resolve()), where


@pytest.mark.slow
def test_a_data_rule_runs_inside_its_environment(data_env):
    """`spatialreasoner` is on no PATH but the environment's: the rule can only have run inside it."""
    repo, workdir, tmp, _ = data_env
    proc = snakemake(repo, workdir, tmp, "synthesize")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    import spatialreasoner.data.rules as data_rules

    for name in data_rules.SYNTHETIC_FILES:
        out = workdir / data_rules.SYNTHETIC_DIR / name
        assert out.is_file() and out.stat().st_size > 0, out
    assert not (repo / data_rules.SYNTHETIC_DIR).exists(), "outputs went to the repository, not the working directory"


@pytest.mark.slow  # about 8 s: one Snakemake dry run
def test_an_env_file_whose_lock_is_missing_stops_the_workflow(tmp_path, copy_checkout):
    repo = copy_checkout(tmp_path / "repo")
    env_file = repo / "envs" / "data.yaml"
    env_file.write_text(re.sub(r"locks/py3\.11/data\.txt", "locks/py3.11/nothing.txt", env_file.read_text()))
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = snakemake(repo, workdir, tmp_path, "-n", "synthesize", timeout=120)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "envs/data.yaml" in message and "locks/py3.11/nothing.txt" in message, message[-3000:]
    assert not (workdir / ".snakemake" / "conda").exists() or not any((workdir / ".snakemake" / "conda").iterdir())


def test_env_files_name_their_locks_from_the_repository_not_from_their_copy(repo_root):
    """Snakemake copies env files into .snakemake/conda/: a relative lock path would be read from there."""
    for path in sorted((repo_root / "envs").glob("*.yaml")):
        text = path.read_text()
        assert "../" not in text, f"{path.name}: a relative path breaks once Snakemake copies the file"
    for path in sorted((repo_root / "envs").glob("*.post-deploy.sh")):
        text = path.read_text()
        assert re.search(r"(^|\s)(-e\s+)?\.(\s|$)", text, re.M) is None, (
            f"{path.name} installs '.', the working directory, which is not the repository under --directory"
        )


def test_every_env_file_installs_an_existing_lock(repo_root):
    assert check_conda_envs(repo_root) == {
        "envs/data.yaml": "locks/py3.11/data.txt",
        "envs/eval.yaml": "locks/py3.11/eval-cuda.txt",
        "envs/train.yaml": "locks/py3.11/train-cuda.txt",
    }


def test_a_lock_changed_since_its_env_file_recorded_it_is_refused(tmp_path):
    (tmp_path / "envs").mkdir()
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "x.txt").write_text("a==1 \\\n    --hash=sha256:00\n")
    (tmp_path / "envs" / "x.yaml").write_text(
        "# lock sha256: " + "0" * 64 + "\ndependencies:\n  - pip:\n      - -r ${SPATIALREASONER_ROOT}/locks/x.txt\n"
    )
    with pytest.raises(ConfigError, match=r"envs/x\.yaml does not record the sha256 of locks/x\.txt.*scripts/lock\.sh"):
        check_conda_envs(tmp_path)
