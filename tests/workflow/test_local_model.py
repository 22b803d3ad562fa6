"""One's own model folder as a model source (``released: {NAME: {path: DIR}}``): refused early when it is not a
model, and otherwise evaluated like any other model, with the same predictions and score as the folder it copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from spatialreasoner.config import check_local_models, load_config
from spatialreasoner.data.local_model import link_model
from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.modeling import check_model_dir, weight_hashes


@pytest.fixture
def own_model(tiny_model_dir, tmp_path):
    """A copy of the tiny model in a folder whose path has spaces."""
    dest = tmp_path / "my checkpoints" / "my model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def refused(config, workdir, *fragments):
    with pytest.raises(ConfigError) as info:
        check_local_models(config, workdir)
    message = str(info.value)
    for fragment in ("config key released.mine.path", *fragments):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def config_with(path, runs=None):
    return {"released": {"mine": {"path": str(path)}}, "runs": runs or {}}


def test_a_complete_folder_with_spaces_is_accepted(own_model, tmp_path):
    check_local_models(config_with(own_model), tmp_path)
    # relative to the working directory
    check_local_models(config_with(Path("my checkpoints") / "my model"), tmp_path)


def test_a_missing_folder_is_refused(tmp_path):
    refused(config_with(tmp_path / "nowhere"), tmp_path, str(tmp_path / "nowhere"), "does not exist")


def test_a_file_is_refused(own_model, tmp_path):
    refused(config_with(own_model / "config.json"), tmp_path, str(own_model / "config.json"), "is a file")


@pytest.mark.parametrize(
    "remove, named",
    [
        ("model.safetensors", "model.safetensors or model.safetensors.index.json (weights)"),
        ("preprocessor_config.json", "image processor"),
        ("tokenizer.json", "tokenizer.json (tokenizer)"),
    ],
)
def test_a_folder_without_weights_or_processor_is_refused(own_model, tmp_path, remove, named):
    for name in (
        ("preprocessor_config.json", "processor_config.json") if remove == "preprocessor_config.json" else (remove,)
    ):
        (own_model / name).unlink(missing_ok=True)
    refused(config_with(own_model), tmp_path, f"model folder {own_model}", named)


def test_truncated_weights_are_refused(own_model, tmp_path):
    weights = own_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(config_with(own_model), tmp_path, "model.safetensors", "truncated")


@pytest.mark.parametrize("inner", ["results/models/SpatialReasoner-SFT", "results/checkpoints/SpatialReasoner-SFT"])
def test_a_training_output_is_refused(tiny_model_dir, tmp_path, inner):
    shutil.copytree(tiny_model_dir, tmp_path / inner)
    message = refused(
        config_with(inner, runs={"SpatialReasoner-SFT": {}}), tmp_path, inner.split("/")[0] + "/" + inner.split("/")[1]
    )
    assert "name the run 'SpatialReasoner-SFT' in evaluate.models" in message


def test_validate_config_checks_the_folder(repo_root, tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"released": {"mine": {"path": str(tmp_path / "absent model")}}}))
    with pytest.raises(ConfigError, match=r"released\.mine\.path: model folder .*absent model does not exist"):
        load_config(repo_root / "config/released.yaml", overlay)


def test_link_folder_reads_as_the_source_and_refuses_a_changed_source(own_model, tmp_path):
    (own_model / "tiny_model.json").unlink()  # one's own checkpoint records no checksums: the link folder does
    out = link_model(own_model, tmp_path / "resources" / "models" / "mine")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p.name for p in own_model.iterdir()), ".local_model.json"]
    )
    assert weight_hashes(out) == weight_hashes(own_model)
    check_model_dir(out)
    weights = own_model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"model\.safetensors has sha256 .*/\.local_model\.json records"):
        check_model_dir(out)


# ---------------------------------------------------------------- the workflow, on CPU


def journey_config(repo_root, own_model) -> dict:
    """The demo's tiny model next to a copy of it given by path, on small synthetic benchmarks, nothing trained."""
    demo = yaml.safe_load((repo_root / "config/demo.yaml").read_text())
    # one small benchmark keeps the run short; every table has a row per model whatever the benchmark
    benches = ("CV-Bench-3D.tsv",)
    return {
        "seed": demo["seed"],
        "vision": demo["vision"],
        "synthetic": {
            **demo["synthetic"],
            "sft": {"train": 4, "val": 2, "conversations": 2},
            "rl": {"train": 4, "val": 2},
            "3DSRBench": {"questions": 6},
            "CV-Bench-3D": {"questions": 8},
        },
        "sources": {name: demo["sources"][name] for name in benches},
        "images": {},
        "datasets": {},
        "benchmarks": {"CV-Bench-3D": demo["benchmarks"]["CV-Bench-3D"]},
        "released": {"tiny-Qwen2.5-VL": demo["released"]["tiny-Qwen2.5-VL"], "mine": {"path": str(own_model)}},
        "runs": {},
        "evaluate": {
            "benchmarks": ["CV-Bench-3D"],
            "models": {"tiny-Qwen2.5-VL": {"system_prompt": False}, "mine": {"system_prompt": False}},
            "protocol": "full_text",
            "max_new_tokens": 24,
            "batch_size": 16,
            "resources": demo["evaluate"]["resources"],
        },
    }


def taught_copy(tiny_model_dir, root: Path) -> Path:
    """The tiny model briefly taught to give replies that vary with the row (the untrained one answers every row
    with the same newlines, so agreeing with it alone would show little): the control of the comparison."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "evaluate_conftest", Path(__file__).parents[1] / "evaluate/conftest.py"
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.make_benchmark(root / "teach.tsv", n=6)
    return helpers.teach(tiny_model_dir, root / "teach.tsv", root / "taught model", rows=6, steps=60)[0]


@pytest.fixture(scope="module")
def own_model_run(tmp_path_factory, copy_checkout, tiny_model_dir, repo_root):
    work = copy_checkout(tmp_path_factory.mktemp("own-model"))
    own = tmp_path_factory.mktemp("own") / "my model"
    shutil.copytree(tiny_model_dir, own)
    config = journey_config(repo_root, own)
    config["released"]["taught"] = {"path": str(taught_copy(tiny_model_dir, tmp_path_factory.mktemp("taught")))}
    config["evaluate"]["models"]["taught"] = {"system_prompt": False}
    (work / "config/own.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    targets = ["results/tables/CV-Bench-3D.csv", "results/tables/summary.md"]
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile", "config/own.yaml"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return work, own


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_copy_given_by_path_scores_as_the_original(own_model_run):
    work, own = own_model_run
    # the workflow's tiny model and the copied folder are the same model, so their rows must agree exactly
    assert weight_hashes(work / "resources/models/tiny-Qwen2.5-VL") == weight_hashes(own)
    assert (work / "resources/models/mine/model.safetensors").resolve() == (own / "model.safetensors").resolve()
    for bench in ("CV-Bench-3D",):
        ours = pd.read_parquet(work / f"results/predictions/mine/{bench}.parquet")
        orig = pd.read_parquet(work / f"results/predictions/tiny-Qwen2.5-VL/{bench}.parquet")
        assert len(ours) == len(orig) > 0
        assert ours["prediction"].tolist() == orig["prediction"].tolist()
        # the control: another folder given by path is read as itself, and its replies differ
        taught = pd.read_parquet(work / f"results/predictions/taught/{bench}.parquet")
        assert taught["prediction"].tolist() != orig["prediction"].tolist()
        hits_ours = pd.read_csv(work / f"results/scores/mine/{bench}/hits.csv")
        hits_orig = pd.read_csv(work / f"results/scores/tiny-Qwen2.5-VL/{bench}/hits.csv")
        assert hits_ours["hit"].tolist() == hits_orig["hit"].tolist()
        table = pd.read_csv(work / f"results/tables/{bench}.csv").set_index("model")
        assert {"mine", "tiny-Qwen2.5-VL"} <= set(table.index)
        numeric = table.select_dtypes("number").columns
        assert table.loc["mine", numeric].equals(table.loc["tiny-Qwen2.5-VL", numeric])  # NaN where both are
    assert "mine" in (work / "results/tables/summary.md").read_text()
