"""The suite's parallel run keeps each module on one pytest-xdist worker (tests/conftest.py), so that a module-scoped
fixture (a workflow run, a trained model, a SLURM cluster) is built once and two modules that bind the same port or
cluster never run their halves side by side. Checked by running two small modules in two workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

MODULES = ("tests/evaluate/test_matcher.py", "tests/evaluate/test_interval_edges.py")


def test_each_module_runs_on_one_worker(repo_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "basetemp"), *MODULES],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    workers = defaultdict(set)
    for worker, module in re.findall(r"^\[(gw\d+)\] .*?PASSED (tests/\S+?\.py)::", proc.stdout, flags=re.M):
        workers[module].add(worker)
    assert set(workers) == set(MODULES), proc.stdout[-3000:]
    spread = {module: sorted(names) for module, names in workers.items() if len(names) > 1}
    assert not spread, f"modules split over workers: {spread}"
    # both workers had work: the grouping is by module, not everything on one worker
    assert len(set().union(*workers.values())) == 2, dict(workers)


ORDER_PLUGIN = """
def pytest_collection_finish(session):
    for item in session.items:
        marks = [m for m in ("slow", "slurm") if item.get_closest_marker(m)]
        print("ITEM", item.nodeid, ",".join(marks) or "-")
"""


def test_longest_groups_are_handed_out_first(repo_root, tmp_path):
    """The whole suite's collection order, which `--no-loadscope-reorder` makes the order in which the workers get
    their work units: every SLURM test, then the demo's tests, then the other modules with slow tests, then the rest."""
    (tmp_path / "order_plugin.py").write_text(ORDER_PLUGIN)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "order_plugin"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    items = [line[5:].rsplit(" ", 1) for line in proc.stdout.splitlines() if line.startswith("ITEM ")]
    assert len(items) > 250, proc.stdout[-2000:]
    groups = ["slurm" if "slurm" in marks else nodeid.split("::")[0] for nodeid, marks in items]
    slow_groups = {group for group, (_, marks) in zip(groups, items, strict=True) if "slow" in marks}
    n_slurm = groups.count("slurm")
    n_demo = groups.count("tests/workflow/test_demo.py")
    assert n_slurm > 0 and n_demo > 0
    assert groups[:n_slurm] == ["slurm"] * n_slurm
    assert groups[n_slurm : n_slurm + n_demo] == ["tests/workflow/test_demo.py"] * n_demo
    rest = groups[n_slurm + n_demo :]
    first_quick = next(i for i, group in enumerate(rest) if group not in slow_groups)
    assert all(group not in slow_groups for group in rest[first_quick:]), "a module with slow tests is handed out late"
    # each work unit is contiguous, so it is one unit in xdist's queue at its first place
    starts = [group for i, group in enumerate(groups) if i == 0 or groups[i - 1] != group]
    assert len(starts) == len(set(starts)), "a group's tests are split in the collection order"


def test_suite_keeps_the_collection_order(repo_root):
    """Without `--no-loadscope-reorder`, pytest-xdist hands out the units with most tests first, not the order above."""
    command = next(line for line in (repo_root / "scripts/test.sh").read_text().splitlines() if "-m pytest" in line)
    assert "--dist loadgroup" in command and "--no-loadscope-reorder" in command
