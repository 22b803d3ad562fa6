"""The data stage end to end through the command line, as the demo's rules call it."""

from __future__ import annotations

import json

import pandas as pd

from spatialreasoner.cli import main


def sr(*args):
    assert main([str(a) for a in args]) == 0, args


def test_synthetic_data_through_every_step(tmp_path):
    syn, dl, img, res = tmp_path / "synthetic", tmp_path / "downloads", tmp_path / "images", tmp_path / "results"
    cfg = {"sft": {"train": 24, "val": 2, "conversations": 6}, "rl": {"train": 12, "val": 2}}
    cfg |= {"3DSRBench": {"questions": 12}, "CV-Bench-3D": {"questions": 6}}
    sr("synthesize", "--out", syn, "--config", json.dumps(cfg))
    for name in ("openimages.tar", "llava.tar", "3dsrbench_v1_vlmevalkit_circular.tsv", "CV-Bench-3D.tsv"):
        sr("fetch", "--url", syn / name, "--out", dl / name)
    sr("extract", "--tar", dl / "openimages.tar", "--out", img / "openimages")
    sr("extract", "--tar", dl / "llava.tar", "--out", img / "llava")
    sr(
        "canonicalize", "--kind", "sft", "--annotations", syn / "SpatialReasonerTrain-SFT",
        "--images", f"image_filename={img / 'openimages/openimages'}", f"image_path={img / 'llava/llava'}",
        "--out", res / "sft.parquet",
    )  # fmt: skip
    sr(
        "canonicalize", "--kind", "rl", "--annotations", syn / "SpatialReasonerTrain-RL",
        "--images", f"image_filename={img / 'openimages/openimages'}", "--out", res / "rl.parquet",
    )  # fmt: skip
    sr("prepare-benchmark", "--benchmark", "3DSRBench", "--tsv", dl / "3dsrbench_v1_vlmevalkit_circular.tsv",
       "--out", res / "3DSRBench.tsv")  # fmt: skip
    sr("prepare-benchmark", "--benchmark", "CV-Bench-3D", "--tsv", dl / "CV-Bench-3D.tsv",
       "--out", res / "CV-Bench-3D.tsv")  # fmt: skip
    sft = pd.read_parquet(res / "sft.parquet")
    assert (sft["kind"] == "qa").sum() == 24 and (sft["kind"] == "conversation").sum() == 6
    assert len(pd.read_parquet(res / "rl.parquet")) == 12
    assert len(pd.read_csv(res / "CV-Bench-3D.tsv", sep="\t")) == 6
