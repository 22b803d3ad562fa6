"""The demo configuration runs the whole workflow end to end on CPU, in a copy of the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, copy_checkout):
    work = copy_checkout(tmp_path_factory.mktemp("demo"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "config/demo.yaml"]
    proc = subprocess.run([*cmd, "--cores", "2"], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    again = subprocess.run([*cmd, "--cores", "2", "-n"], cwd=work, env=env, capture_output=True, text=True)
    config = yaml.safe_load((work / "config/demo.yaml").read_text())
    return work, config, again.stdout + again.stderr


@pytest.mark.slow
def test_demo_writes_both_tables_with_every_model(demo_run):
    work, config, _ = demo_run
    models = set(config["evaluate"]["models"])
    rows = models | {"chance (expected)", f"random draw (seed {config['seed']})"}
    threedsr = pd.read_csv(work / "results/tables/3DSRBench.csv").set_index("model")
    assert list(threedsr.columns[:4]) == ["rows", "groups", "unmatched (%)", "overall"]
    assert rows == set(threedsr.index)
    for col in ("overall", "height", "location", "orientation", "multi_object"):
        assert threedsr[col].between(0, 100).all()
        assert (threedsr[f"{col} ci_low"] <= threedsr[col]).all() and (
            threedsr[col] <= threedsr[f"{col} ci_high"]
        ).all()
    # every row rests on the whole benchmark
    bench = pd.read_csv(work / "results/benchmarks/3DSRBench.tsv", sep="\t", usecols=["index"])
    assert (threedsr["rows"] == len(bench)).all()
    cvb = pd.read_csv(work / "results/tables/CV-Bench-3D.csv").set_index("model")
    assert {"overall (pooled)", "overall (mean of Depth and Distance)"} <= set(cvb.columns)
    assert rows == set(cvb.index)
    assert cvb.loc["chance (expected)", "overall (pooled)"] == 50.0  # every CV-Bench-3D question has 2 options
    summary = (work / "results/tables/summary.md").read_text()
    assert "60.3" in summary and "SpatialReasoner" in summary and "Paired differences" in summary


@pytest.mark.slow
def test_demo_evaluates_checkpoints_and_writes_the_report(demo_run):
    work, config, _ = demo_run
    table = pd.read_csv(work / "results/tables/checkpoints.csv")
    for run, steps in config["evaluate"]["checkpoints"].items():
        part = table[table["run"] == run]
        init = config["runs"][run]["init"]
        expected = ([0] if init in config["evaluate"]["models"] else []) + list(steps)
        expected.append(config["runs"][run]["stop_steps"])
        assert sorted(set(part["step"])) == expected, (run, part)
        assert (work / f"results/plots/checkpoints/{run}.png").is_file()
        # the final step's accuracy is the final model's, as in the benchmark tables
        final = part[part["step"] == config["runs"][run]["stop_steps"]].set_index("benchmark")["accuracy"]
        srb = pd.read_csv(work / "results/tables/3DSRBench.csv").set_index("model")
        assert final["3DSRBench"] == srb.loc[run, "overall"]
    page = (work / "results/report/report.html").read_text()
    assert page.count('<img class="thumb"') > 0 and "Configuration (resolved" in page


@pytest.mark.slow
def test_demo_leaves_logs_benchmarks_and_final_models(demo_run):
    work, config, _ = demo_run
    for run in config["runs"]:
        assert (work / f"results/models/{run}/run.json").is_file()
        assert (work / f"results/models/{run}/trainer_state.json").is_file()
    logs = {p.relative_to(work / "logs").parts[0] for p in (work / "logs").rglob("*.log")}
    assert {"build_tiny_model", "canonicalize", "prepare_benchmark", "infer", "score", "tables"} <= logs
    assert {"plot_tables", "plot_training"} <= logs
    benchmarked = {p.relative_to(work / "benchmarks").parts[0] for p in (work / "benchmarks").rglob("*.tsv")}
    assert logs <= benchmarked, logs - benchmarked


@pytest.mark.slow
def test_demo_rerun_has_nothing_to_do(demo_run):
    _, _, dry_run_output = demo_run
    assert "Nothing to be done" in dry_run_output, dry_run_output[-3000:]


@pytest.mark.slow
def test_demo_draws_the_report_figures(demo_run):
    work, config, _ = demo_run
    from PIL import Image

    figures = [f"results/plots/{bench}.png" for bench in config["evaluate"]["benchmarks"]]
    figures += [f"results/plots/training/{run}.png" for run in config["runs"]]
    for figure in figures:
        with Image.open(work / figure) as img:
            assert img.format == "PNG" and min(img.size) > 200, (figure, img.size)


@pytest.mark.slow
def test_demo_tables_the_canary_for_every_model_with_chance(demo_run):
    from spatialreasoner.evaluate.tables import CANARY_NOTE, CHANCE

    work, config, _ = demo_run
    table = pd.read_csv(work / "results/tables/Canary.csv").set_index("model")
    assert list(table.columns[:5]) == ["rows", "unmatched (%)", "overall", "overall ci_low", "overall ci_high"]
    assert set(config["evaluate"]["models"]) | {CHANCE} <= set(table.index)
    assert table.loc[CHANCE, "overall"] <= 55.0
    assert (table["rows"] == 2 * config["synthetic"]["canary"]["pairs"]).all()
    assert CANARY_NOTE in (work / "results/tables/summary.md").read_text()
    assert "memorisation check of the chain" in (work / "results/report/report.html").read_text()


@pytest.mark.slow
def test_demo_sft_memorises_the_canary_and_grpo_keeps_it(demo_run):
    work, _, _ = demo_run
    table = pd.read_csv(work / "results/tables/Canary.csv").set_index("model")
    sft, grpo = table.loc["SpatialReasoner-SFT"], table.loc["SpatialReasoner"]
    assert sft["overall"] >= 85.0, table.to_string()
    assert grpo["overall"] >= sft["overall ci_low"], table.to_string()
    # the text alone gives chance: the base model, which never saw the canary, is not above it
    assert table.loc["tiny-Qwen2.5-VL", "overall ci_low"] <= 50.0, table.to_string()


@pytest.mark.slow
def test_demo_follows_the_canary_along_the_sft_checkpoints(demo_run):
    work, config, _ = demo_run
    curve = pd.read_csv(work / "results/tables/checkpoints.csv")
    canary = curve[(curve["benchmark"] == "Canary") & (curve["run"] == "SpatialReasoner-SFT")]
    steps = [
        0,
        *config["evaluate"]["checkpoints"]["SpatialReasoner-SFT"],
        config["runs"]["SpatialReasoner-SFT"]["stop_steps"],
    ]
    assert canary["step"].tolist() == steps
    final = pd.read_csv(work / "results/tables/Canary.csv").set_index("model").loc["SpatialReasoner-SFT", "overall"]
    assert canary["accuracy"].iloc[-1] == final
