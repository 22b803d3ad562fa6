"""Accuracy along training: a checkpoint as a model folder, the checkpoints table and its figure."""

import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.checkpoint_model import export_checkpoint
from spatialreasoner.evaluate.checkpoints import checkpoint_table, read_checkpoint_table
from spatialreasoner.evaluate.plots import plot_checkpoints
from spatialreasoner.evaluate.score import score_file

from .test_tables import cvb_frame, srb_frame


def test_checkpoint_becomes_a_model_folder(tmp_path, tiny_model_dir):
    work = tmp_path / "checkpoints" / "run"
    ckpt = work / "checkpoint-20"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": []}))
    (ckpt / "optimizer.pt").write_bytes(b"optimizer state")
    final = tmp_path / "models" / "run"
    final.mkdir(parents=True)
    (final / "run.json").write_text(json.dumps({"run": "run", "stop_steps": 40}))

    out = export_checkpoint(ckpt, final, tmp_path / "checkpoint_models" / "run" / "step-20", 20)
    weights = sorted(p.name for p in ckpt.glob("*.safetensors"))
    assert weights and all((out / w).read_bytes() == (ckpt / w).read_bytes() for w in weights)
    assert not (out / "optimizer.pt").exists()
    record = json.loads((out / "run.json").read_text())
    assert {k: record[k] for k in ("run", "stop_steps", "checkpoint_step")} == {
        "run": "run",
        "stop_steps": 40,
        "checkpoint_step": 20,
    }

    with pytest.raises(DataError, match=r"checkpoint-30: missing; the run saved checkpoint-20"):
        export_checkpoint(work / "checkpoint-30", final, tmp_path / "x", 30)
    with pytest.raises(DataError, match=r"trainer_state\.json: global_step is 20, expected 10"):
        export_checkpoint(ckpt, final, tmp_path / "y", 10)
    (final / "run.json").unlink()
    with pytest.raises(DataError, match=r"not a finished run's model folder"):
        export_checkpoint(ckpt, final, tmp_path / "z", 20)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def _score(tmp_path, bench, frame, name, right):
    """Score a model that answers the first ``right`` rows correctly and every other row wrongly."""
    wrong = {"A": "B", "B": "A", "C": "A", "D": "A"}
    preds = [a if i < right else wrong[a] for i, a in enumerate(frame["answer"])]
    path = tmp_path / "pred" / name / f"{bench}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(prediction=preds).to_parquet(path)
    folder = tmp_path / "scores" / name / bench
    score_file(path, bench, folder)
    return folder


def test_checkpoint_table_and_plot(tmp_path):
    benchmarks = {}
    for bench, frame in (("3DSRBench", srb_frame()), ("CV-Bench-3D", cvb_frame())):
        benchmarks[bench] = tmp_path / f"{bench}.tsv"
        frame.drop(columns="prediction").assign(image="aGk=").to_csv(benchmarks[bench], sep="\t", index=False)
    points = []
    for step, right in ((0, 0), (10, 2), (20, 4)):
        for bench, frame in (("3DSRBench", srb_frame()), ("CV-Bench-3D", cvb_frame())):
            points.append(("run", step, bench, _score(tmp_path, bench, frame, f"m{step}", right)))
    out = tmp_path / "tables" / "checkpoints.csv"
    table = checkpoint_table(points[::-1], benchmarks, out, seed=0, resamples=500)
    assert table.equals(read_checkpoint_table(out).astype(table.dtypes.to_dict()))
    cvb = table[table["benchmark"] == "CV-Bench-3D"]
    assert cvb["step"].tolist() == [0, 10, 20]  # sorted by step
    assert cvb["accuracy"].tolist() == [0.0, 50.0, 100.0]
    assert cvb["metric"].unique().tolist() == ["overall (pooled)"]
    srb = table[table["benchmark"] == "3DSRBench"]
    # the first 4 rows right = groups q1 (rows 0-1) right, q2 (rows 2-3) right: 2 of 5 groups
    assert srb["accuracy"].tolist() == [0.0, 20.0, 40.0] and (srb["rows"] == 10).all()
    assert ((table["ci_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci_high"])).all()
    # every row names the protocol that scored it and the rows a judge decided (none: the matcher alone)
    assert table["protocol"].unique().tolist() == ["answer_tag"] and (table["judged rows"] == 0).all()

    png = plot_checkpoints(out, "run", tmp_path / "plots" / "checkpoints" / "run.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 600
    with pytest.raises(DataError, match=r"no rows for run 'other'; it holds run"):
        plot_checkpoints(out, "other", tmp_path / "other.png")
    df = pd.read_csv(out)
    df.loc[1, "accuracy"] = 140.0
    df.to_csv(out, index=False)
    with pytest.raises(DataError, match=r"checkpoints\.csv: line\(s\) 3 hold a step or accuracy"):
        read_checkpoint_table(out)
