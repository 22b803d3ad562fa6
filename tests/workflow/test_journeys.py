"""The journeys researchers take first, each shown by a dry run of the workflow: the paper's tables from the released
checkpoints alone, one's own checkpoint, the ablations, a selected subset of models and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(cwd, *args, check=True):
    proc = subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dry_run(cwd, *configfiles, extra=()):
    """(job counts by rule, outputs of every job, the whole text) of ``snakemake -n --forceall``."""
    proc = snakemake(cwd, "-n", "--forceall", "--cores", "4", *extra, "--configfile", *map(str, configfiles))
    text = proc.stdout + proc.stderr
    counts = {}
    stats = text.split("Job stats:", 1)[1]
    for line in stats.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    outputs = set()
    for line in text.splitlines():
        if line.startswith("    output: "):
            outputs |= {o.strip() for o in line.removeprefix("    output: ").split(", ")}
    return counts, outputs, text


def test_released_config_plans_no_training_and_fetches_only_the_benchmarks(repo_root):
    counts, outputs, _ = dry_run(repo_root, "config/released.yaml")
    config = yaml.safe_load((repo_root / "config/released.yaml").read_text())
    assert counts.get("train", 0) == 0, counts
    assert counts["infer"] == 8, counts
    assert counts["snapshot_model"] == 4, counts
    # no training data: neither the image tars nor the annotation repositories
    assert counts["fetch"] == 2, counts
    assert "snapshot_dataset" not in counts and "canonicalize" not in counts and "extract_images" not in counts
    fetched = {o for o in outputs if o.startswith("resources/downloads/")}
    paper = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    want = {f"resources/downloads/{paper['benchmarks'][b]['source']}" for b in paper["evaluate"]["benchmarks"]}
    assert fetched == want, fetched
    released = [m for m in paper["evaluate"]["models"] if m in paper["released"]]
    assert sorted(config["evaluate"]["models"]) == sorted(released)
    for model in released:
        for bench in paper["evaluate"]["benchmarks"]:
            assert f"results/predictions/{model}/{bench}.parquet" in outputs
    for target in ("results/tables/3DSRBench.csv", "results/tables/CV-Bench-3D.csv", "results/tables/summary.md",
                   "results/plots/3DSRBench.png", "results/report/report.html"):  # fmt: skip
        assert target in outputs, target


def test_released_config_evaluates_as_the_paper_config_does(repo_root):
    """The same released models, prompts, decoding and published numbers as config/config.yaml."""
    released = yaml.safe_load((repo_root / "config/released.yaml").read_text())
    paper = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    assert released["released"] == paper["released"]
    assert released["paper"] == paper["paper"]
    assert released["prompts"]["system"] == paper["prompts"]["system"]
    for model, spec in released["evaluate"]["models"].items():
        assert spec == paper["evaluate"]["models"][model], model
    for key, value in paper["evaluate"].items():
        if key != "models":
            assert released["evaluate"][key] == value, key


# ---------------------------------------------------------------- evaluate.only


def write_overlay(tmp_path, content: dict, name="overlay.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return path


def test_evaluate_only_replaces_the_merged_models_and_benchmarks(repo_root, tmp_path):
    only = {"models": ["ccvl-SpatialReasoner", "Qwen2.5-VL-7B-Instruct"], "benchmarks": ["CV-Bench-3D"]}
    overlay = write_overlay(tmp_path, {"evaluate": {"only": only}})
    counts, outputs, _ = dry_run(repo_root, repo_root / "config/config.yaml", overlay)
    predicted = {o for o in outputs if o.startswith("results/predictions/") and o.endswith(".parquet")}
    assert predicted == {f"results/predictions/{m}/CV-Bench-3D.parquet" for m in only["models"]}
    assert counts.get("train", 0) == 0 and "canonicalize" not in counts, counts
    assert "results/tables/3DSRBench.csv" not in outputs and "results/tables/CV-Bench-3D.csv" in outputs


def test_evaluate_only_keeps_its_order_in_the_resolved_config(repo_root, tmp_path):
    from spatialreasoner.config import load_config

    only = ["SpatialReasoner", "ccvl-SpatialReasoner"]
    overlay = write_overlay(tmp_path, {"evaluate": {"only": {"models": only}}})
    config = load_config(repo_root / "config/config.yaml", overlay)
    assert list(config["evaluate"]["models"]) == only
    assert config["evaluate"]["benchmarks"] == ["3DSRBench", "CV-Bench-3D"]


def test_evaluate_only_refuses_unknown_names(repo_root, tmp_path):
    import pytest

    from spatialreasoner.config import load_config
    from spatialreasoner.errors import ConfigError

    cases = [
        ({"models": ["ccvl-SpatialReasoner", "SpatialReasonr"]}, r"evaluate\.only\.models\[1\]: 'SpatialReasonr'"),
        ({"benchmarks": ["CV-Bench-3D", "3DSRBench"]}, r"evaluate\.only\.benchmarks\[1\]: '3DSRBench' is not in"),
    ]
    for only, message in cases:
        released = "config/released.yaml" if "benchmarks" not in only else "config/config.yaml"
        overlay = write_overlay(tmp_path, {"evaluate": {"only": only}})
        if "benchmarks" in only:
            overlay = write_overlay(tmp_path, {"evaluate": {"benchmarks": ["CV-Bench-3D"], "only": only}})
        with pytest.raises(ConfigError, match=message):
            load_config(repo_root / released, overlay)


# ---------------------------------------------------------------- ablations


def test_ablation_runs_are_trained_and_evaluated(repo_root):
    counts, outputs, text = dry_run(repo_root, "config/config.yaml", "config/ablations.yaml")
    ablations = yaml.safe_load((repo_root / "config/ablations.yaml").read_text())
    paper = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    assert counts["train"] == len(paper["runs"]) + len(ablations["runs"]), counts
    for run in ablations["runs"]:
        assert f"results/models/{run}" in outputs, run
        assert run in ablations["evaluate"]["models"], run
        for bench in paper["evaluate"]["benchmarks"]:
            assert f"results/predictions/{run}/{bench}.parquet" in outputs, (run, bench)
            assert f"results/scores/{run}/{bench}/hits.csv" in outputs, (run, bench)
            # a row of the benchmark's table
            assert f"--score {bench}:{run}=results/scores/{run}/{bench}" in text, (run, bench)
    models = len(paper["evaluate"]["models"]) + len(ablations["evaluate"]["models"])
    assert counts["infer"] == models * len(paper["evaluate"]["benchmarks"]), counts


# ---------------------------------------------------------------- cluster conventions: localrules


def localrules_line(text: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith("localrules (run by Snakemake itself, never submitted): "):
            return line.split(": ", 1)[1].split(", ")
    return []


def test_downloads_and_short_rules_are_local_on_a_cluster(repo_root, tmp_path):
    _, _, text = dry_run(repo_root, "config/released.yaml", extra=("--profile", "profiles/slurm"))
    local = localrules_line(text)
    for rule in ("fetch", "snapshot_model", "snapshot_dataset", "score", "tables", "report_html"):
        assert rule in local, (rule, local)
    assert "infer" not in local and "train" not in local
    # a site that forbids work on the login node submits everything
    overlay = write_overlay(tmp_path, {"local_rules": []})
    _, _, text = dry_run(repo_root, "config/released.yaml", overlay, extra=("--profile", "profiles/slurm"))
    assert localrules_line(text) == []


def test_an_unknown_local_rule_is_refused(repo_root, tmp_path):
    overlay = write_overlay(tmp_path, {"local_rules": ["fetch", "fecth"]})
    proc = snakemake(repo_root, "-n", "--cores", "1", "--configfile", "config/released.yaml", str(overlay), check=False)
    assert proc.returncode != 0
    assert "config key local_rules[1]: 'fecth' is not a rule of the workflow" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- cluster conventions: partition time limits


def test_a_partition_limit_turns_long_training_into_a_chain_of_resuming_jobs(repo_root):
    _, _, text = dry_run(repo_root, "config/config.yaml", extra=("--config", "max_runtime=1440"))
    paper = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    longest = 0
    for run, spec in paper["runs"].items():
        runtime = spec["resources"]["runtime"]
        attempts = -(-runtime // 1440) + 1
        longest = max(longest, attempts)
        assert (
            f"run {run}: runtime {runtime} min > max_runtime 1440 min: up to {attempts} jobs of 1440 min "
            f"({attempts - 1} to finish + 1 spare), each resuming from the newest checkpoint" in text
        ), text[:3000]
    assert f"train jobs: retries {longest - 1}" in text
    train_resources = re.findall(r"^rule train:\n(?:    .*\n)*?    resources: (.*)$", text, flags=re.M)
    assert len(train_resources) == len(paper["runs"])
    for resources in train_resources:
        assert ", runtime=1440," in resources, resources
    # without a limit each run asks for its own runtime and the profile's retries apply
    _, _, text = dry_run(repo_root, "config/config.yaml")
    assert "> max_runtime" not in text and "train jobs: retries" not in text


def test_under_a_partition_limit_no_job_asks_for_a_longer_time(repo_root):
    """A limit below inference's and the snapshots' time limits (6 h and 4 h): every job's time limit is the partition's at most (a
    longer request is refused by sbatch and stops the controller), and those below it keep their own."""
    _, _, text = dry_run(repo_root, "config/config.yaml", extra=("--config", "max_runtime=120"))
    runtimes = {}
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", text, flags=re.M):
        runtime = re.search(r"\bruntime=(\d+)", resources)
        assert runtime or rule == "all", (rule, resources)  # the target rule runs nothing
        if runtime:
            runtimes.setdefault(rule, set()).add(int(runtime.group(1)))
    assert {"infer", "snapshot_model", "train", "tables"} <= set(runtimes), sorted(runtimes)
    assert max(max(values) for values in runtimes.values()) == 120, runtimes
    assert runtimes["infer"] == {120} and runtimes["snapshot_model"] == {120} and runtimes["train"] == {120}
    assert runtimes["tables"] == {10}
    _, _, text = dry_run(repo_root, "config/config.yaml")
    infer = re.findall(r"^rule infer:\n(?:    .*\n)*?    resources: (.*)$", text, flags=re.M)
    asked = yaml.safe_load((repo_root / "config/config.yaml").read_text())["evaluate"]["resources"]["runtime"]
    assert asked > 120 and infer and all(f", runtime={asked}," in resources for resources in infer), infer[:1]


def test_a_limit_within_the_stop_warning_is_refused(repo_root, tmp_path):
    from spatialreasoner.config import load_config
    from spatialreasoner.errors import ConfigError

    overlay = write_overlay(tmp_path, {"max_runtime": 10})
    try:
        load_config(repo_root / "config/config.yaml", overlay)
    except ConfigError as exc:
        assert "config key max_runtime: 10 min is within the 600 s before the time limit" in str(exc), exc
    else:
        raise AssertionError("max_runtime 10 was accepted")
