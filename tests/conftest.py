"""Shared fixtures: offline Hub, the repository root, and one tiny Qwen2.5-VL built per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Nothing in the tests may reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process, inherited by every process a test starts (set before torch is imported). The tiny
# models gain nothing from a second thread, and tests that run several processes (parallel inference workers, two
# training ranks, workflow jobs, pytest-xdist workers) would otherwise put more threads than cores to spin against
# each other: on 2 loaded cores, 2-thread generation with the tiny model was measured 20x slower than 1-thread.
# Workflow jobs get their rule's `threads` from Snakemake itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The two longest work units of the full suite, each about 6 minutes of one worker on 2 cores: every SLURM test (one
# cluster, the shrunk DAG through it) and the local demo run that the demo tests read. They are handed out first, one
# to each worker; started last, they left one worker idle for minutes at the end.
LONGEST_GROUPS = ("slurm", "tests/workflow/test_demo.py")


def xdist_group(item) -> str:
    """The work unit a test belongs to: the SLURM tests together, otherwise its module."""
    if item.get_closest_marker("slurm"):
        return "slurm"
    return Path(item.path).relative_to(REPO_ROOT).as_posix()


# First: pytest-xdist's own hook (registered after this file) turns each item's xdist_group marker into its node id,
# so markers added after it are ignored and a module's tests are spread over the workers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), keep each module on one worker, so that its module-scoped fixtures (a
    workflow run, a trained model) are built once, and every SLURM test on one worker, so that one test cluster serves
    them. Work units are handed out in collection order (scripts/test.sh passes `--no-loadscope-reorder`, without which
    xdist would hand out the units with most tests first): the longest groups, then modules with slow tests, then the
    rest, so that the longest ones do not start last."""
    slow_groups = {xdist_group(item) for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        group = xdist_group(item)
        first = LONGEST_GROUPS.index(group) if group in LONGEST_GROUPS else len(LONGEST_GROUPS)
        return first, group not in slow_groups

    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    items.sort(key=rank)  # stable: the order within each group stays


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised Qwen2.5-VL folder (built once per session; treat it as read-only)."""
    from spatialreasoner.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)


def copy_checkout_to(dest: Path) -> Path:
    """Copy tracked and untracked-but-not-ignored files (a fresh clone plus local edits, no results) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="session")
def copy_checkout():
    """``copy_checkout(dest)``: a copy of the repository to run the workflow in without touching its results/."""
    return copy_checkout_to
