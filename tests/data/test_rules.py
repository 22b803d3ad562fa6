"""Config -> file names of the data rules, on the shipped demo and paper configurations."""

from __future__ import annotations

import yaml

from spatialreasoner.data import rules
from spatialreasoner.synth.generate import OUTPUTS


def load(repo_root, name):
    return yaml.safe_load((repo_root / "config" / name).read_text())


def test_demo_sources_are_produced_by_synthesize(repo_root):
    cfg = load(repo_root, "demo.yaml")
    produced = {f"{rules.SYNTHETIC_DIR}/{n}" for n in (*rules.SYNTHETIC_FILES, *rules.SYNTHETIC_DIRS)}
    assert {n for n in OUTPUTS} == {*rules.SYNTHETIC_FILES, *rules.SYNTHETIC_DIRS}
    for name in rules.url_sources(cfg):
        assert set(rules.fetch_inputs(cfg, name)) <= produced and rules.fetch_inputs(cfg, name)
    for name, ds in cfg["datasets"].items():
        assert rules.source_path(cfg, ds["annotations"]) in produced
        assert rules.image_set_dirs(cfg, name) == [f"resources/images/{s}" for s in ds["images"]]
    assert rules.image_root_args(cfg, "sft") == [
        "image_filename=resources/images/openimages/openimages",
        "image_path=resources/images/llava/llava",
    ]


def test_paper_sources_are_downloads_and_snapshots(repo_root):
    cfg = load(repo_root, "config.yaml")
    for name in rules.url_sources(cfg):
        assert cfg["sources"][name]["url"].startswith("https://huggingface.co/")
        assert rules.fetch_inputs(cfg, name) == []
        assert rules.source_path(cfg, name) == f"resources/downloads/{name}"
    assert sorted(rules.repo_sources(cfg)) == [
        "OpenImages_3DSR_apr23_sampled24k_NT_llava_24k",
        "OpenImages_3DSR_mar16_filtered1200",
        "SpatialReasonerTrain-RL",
        "SpatialReasonerTrain-SFT",
    ]
    assert rules.source_path(cfg, "SpatialReasonerTrain-SFT") == "resources/snapshots/SpatialReasonerTrain-SFT"


def test_check_and_pattern_args():
    cfg = {"sources": {"f": {"url": "file:///x/y.tar", "sha256": "a" * 64, "size": 10}, "r": {"repo": "a/b"}}}
    assert rules.check_args(cfg, "f") == f"--sha256 {'a' * 64} --size 10"
    assert rules.fetch_inputs(cfg, "f") == ["/x/y.tar"]
    assert rules.pattern_args(cfg, "r") == []
    cfg["sources"]["r"]["allow_patterns"] = ["*.json"]
    assert rules.pattern_args(cfg, "r") == ["--allow-patterns", "*.json"]
