"""The suite's parallel run keeps each module on one pytest-xdist worker (tests/conftest.py), so that a module-scoped
fixture (a workflow run, a trained model, a SLURM cluster) is built once and two modules that bind the same port or
cluster never run their halves side by side. Checked by running two small modules in two workers."""

from __future__ import annotations

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
