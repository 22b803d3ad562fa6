"""The demo's canary: every model on it, with chance, in the summary and the report, and along the SFT checkpoints.

These assertions belong beside tests/workflow/test_demo.py's and read the same kind of run; until they share its
fixture, this module runs the demo once more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from spatialreasoner.evaluate.tables import CANARY_NOTE, CHANCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, copy_checkout):
    work = copy_checkout(tmp_path_factory.mktemp("demo-canary"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "config/demo.yaml", "--cores", "2"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return work, yaml.safe_load((work / "config/demo.yaml").read_text())


def test_demo_tables_the_canary_for_every_model_with_chance(demo_run):
    work, config = demo_run
    table = pd.read_csv(work / "results/tables/Canary.csv").set_index("model")
    assert list(table.columns) == ["rows", "unmatched (%)", "overall", "overall ci_low", "overall ci_high"]
    assert set(config["evaluate"]["models"]) | {CHANCE} <= set(table.index)
    assert table.loc[CHANCE, "overall"] <= 55.0
    assert (table["rows"] == 2 * config["synthetic"]["canary"]["pairs"]).all()
    assert CANARY_NOTE in (work / "results/tables/summary.md").read_text()
    assert "memorisation check of the chain" in (work / "results/report/report.html").read_text()


def test_demo_follows_the_canary_along_the_sft_checkpoints(demo_run):
    work, config = demo_run
    curve = pd.read_csv(work / "results/tables/checkpoints.csv")
    canary = curve[(curve["benchmark"] == "Canary") & (curve["run"] == "SpatialReasoner-SFT")]
    steps = [
        0,
        *config["evaluate"]["checkpoints"]["SpatialReasoner-SFT"],
        config["runs"]["SpatialReasoner-SFT"]["stop_steps"],
    ]
    assert canary["step"].tolist() == steps
    assert (work / "results/plots/checkpoints/SpatialReasoner-SFT.png").stat().st_size > 0
