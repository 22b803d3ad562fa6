"""Scoring and tables on small hand-computed predictions."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.score import (
    TABLE_COLUMNS,
    circular_group,
    random_predictions,
    score_file,
    score_frame,
    validate_predictions,
)

COLORS = {"A": "red", "B": "blue", "C": "green", "D": "white"}


def srb_rows():
    # (qid, category, n_options, answer, prediction)
    spec = [
        ("q1", "height_higher", 2, "A", "<think>x</think><answer>A</answer>"),
        ("q1-1", "height_higher", 2, "B", "B"),
        ("q2", "height_higher", 2, "A", "A"),
        ("q2-1", "height_higher", 2, "B", "A"),  # miss: group q2 fails
        ("q1-flip", "height_higher", 2, "B", "blue"),  # text match
        ("q1-flip-1", "height_higher", 2, "A", "<answer>(A) red</answer>"),
        ("q3", "location_above", 4, "C", "Z"),  # lone Z: miss
        ("q4", "multi_object_facing", 3, "C", "C."),
        ("q4-1", "multi_object_facing", 3, "A", "**A**"),
        # answer_tag: B; full text: no letter token (B is glued to the tags), no option text -> miss
        ("q4-2", "multi_object_facing", 3, "B", "<think>The answer is A</think><answer>B</answer>"),
    ]
    rows = []
    for i, (qid, cat, n, answer, pred) in enumerate(spec):
        row = {"index": 100 + i, "qid": qid, "question": f"question {i}", "category": cat, "answer": answer}
        for letter in "ABCD":
            row[letter] = COLORS[letter] if "ABCD".index(letter) < n else None
        row["prediction"] = pred
        rows.append(row)
    return pd.DataFrame(rows)


def cvb_rows():
    spec = [("Depth", "A", "A"), ("Depth", "B", "B"), ("Depth", "A", "B"), ("Distance", "B", "blue")]
    return pd.DataFrame(
        [
            {"index": i, "question": "q", "A": "red", "B": "blue", "answer": a, "category": c, "prediction": p}
            for i, (c, a, p) in enumerate(spec)
        ]
    )


def test_circular_group():
    qids = pd.Series(["X", "X-1", "X-2", "X-flip", "X-flip-1", "X-flip-3", "Y-10", "a-b-c"])
    assert circular_group(qids).tolist() == ["X", "X", "X", "X-flip", "X-flip", "X-flip", "Y-10", "a-b"]


def test_3dsrbench_hand_computed():
    hits, tables = score_frame(srb_rows(), "3DSRBench")
    assert hits.columns.tolist() == ["index", "qid", "category", "extracted", "hit"]
    assert hits["hit"].tolist() == [True, True, True, False, True, True, False, True, True, True]
    assert hits["extracted"].tolist() == ["A", "B", "A", "A", "B", "A", "Z", "C", "A", "B"]
    main, per_row = tables["main"], tables["per_row"]
    assert tables["n_groups"] == 5  # q1, q2, q1-flip, q3, q4
    assert main["overall"] == 60.0
    assert main["height"] == 66.7 and main["height_higher"] == 66.7
    assert main["location"] == 0.0 and main["location_above"] == 0.0
    assert main["multi_object"] == 100.0 and main["multi_object_facing"] == 100.0
    assert math.isnan(main["orientation"]) and math.isnan(main["location_next_to"])
    assert per_row["overall"] == 80.0 and per_row["height"] == 83.3 and per_row["multi_object"] == 100.0


def test_full_text_protocol_differs():
    hits, tables = score_frame(srb_rows(), "3DSRBench", protocol="full_text")
    # q1: "<think>x</think><answer>A</answer>" is one token without an option text -> miss; q4-2 likewise
    assert hits["extracted"].tolist()[0] == "Z" and hits["extracted"].tolist()[9] == "Z"
    assert tables["main"]["overall"] == 20.0  # groups q1 and q4 now fail too: only q1-flip of 5 is hit
    assert tables["per_row"]["overall"] == 60.0


def test_cvbench_overall_is_pooled():
    hits, tables = score_frame(cvb_rows(), "CV-Bench-3D")
    assert "qid" not in hits.columns
    assert tables["main"] == {"overall": 75.0, "Depth": 66.7, "Distance": 100.0}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.assign(index=[100, 100] + list(range(2, 10))), "duplicate indices.*index 100"),
        (lambda df: df.assign(category=["height_higher"] * 9 + ["height_lower"]), "unknown categor.*height_lower.*109"),
        (lambda df: df.assign(answer=["C"] + list(df["answer"][1:])), "answer is not one of the row's options.*100"),
        (lambda df: df.drop(columns=["qid"]), "missing column.*qid"),
        (lambda df: df.drop(columns=["prediction"]), "missing column.*prediction"),
    ],
)
def test_bad_predictions_name_rows(mutate, message):
    with pytest.raises(DataError, match=message):
        validate_predictions(mutate(srb_rows()), "3DSRBench", "preds.parquet")


def test_missing_and_extra_rows_against_benchmark():
    df = srb_rows()
    reference = list(df["index"]) + [999]
    with pytest.raises(DataError, match="missing benchmark rows.*999"):
        validate_predictions(df, "3DSRBench", "preds.parquet", reference)
    with pytest.raises(DataError, match="not in the benchmark.*109"):
        validate_predictions(df, "3DSRBench", "preds.parquet", reference[:-2])


def test_group_mixing_categories_is_an_error():
    df = srb_rows()
    df.loc[1, "category"] = "location_above"
    with pytest.raises(DataError, match="q1.*mix categories"):
        score_frame(df, "3DSRBench")


@pytest.mark.parametrize("suffix", [".parquet", ".tsv", ".xlsx"])
def test_score_file_formats_and_outputs(tmp_path, suffix):
    df = srb_rows()
    path = tmp_path / "model-x" / f"3DSRBench{suffix}"
    path.parent.mkdir()
    if suffix == ".parquet":
        df.to_parquet(path)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        df.to_excel(path, index=False)
    bench_tsv = tmp_path / "bench.tsv"
    df.drop(columns="prediction").assign(image="aGk=").to_csv(bench_tsv, sep="\t", index=False)
    out = tmp_path / "scores"
    summary = score_file(path, "3DSRBench", out, reference=bench_tsv)
    assert summary["model"] == "model-x" and summary["rows"] == 10 and summary["groups"] == 5
    hits = pd.read_csv(out / "hits.csv")
    assert hits.columns.tolist() == ["index", "qid", "category", "extracted", "hit"]
    assert hits["hit"].sum() == 8
    table = pd.read_csv(out / "table.csv")
    assert table.columns.tolist() == ["model", *TABLE_COLUMNS["3DSRBench"]]
    assert table.loc[0, "overall"] == 60.0
    assert pd.read_csv(out / "table_per_row.csv").loc[0, "overall"] == 80.0
    assert json.loads((out / "summary.json").read_text())["unmatched_Z"] == 1


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        score_file(tmp_path / "none.parquet", "CV-Bench-3D", tmp_path / "o")
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        score_file(tmp_path / "p.json", "CV-Bench-3D", tmp_path / "o")


def test_random_baseline_uses_each_rows_own_options():
    rng = np.random.default_rng(0)
    n = 3000
    n_opts = rng.integers(2, 5, size=n)
    df = pd.DataFrame(
        {
            "index": range(n),
            "question": "q",
            "A": "a",
            "B": "b",
            "C": ["c" if k > 2 else None for k in n_opts],
            "D": ["d" if k > 3 else "" for k in n_opts],
            "answer": "A",
            "category": "Depth",
        }
    )
    picks = random_predictions(df, seed=7)
    assert picks == random_predictions(df, seed=7)
    assert picks != random_predictions(df, seed=8)
    for k, pick in zip(n_opts, picks, strict=True):
        assert pick in "ABCD"[:k]
    # each row's chance of hitting is 1/k; the mean must be near the expectation (not 1/4 for every row)
    hit = np.array([p == "A" for p in picks])
    expected = float(np.mean(1 / n_opts))
    assert abs(hit.mean() - expected) < 0.03


def test_random_baseline_from_benchmark_tsv(tmp_path):
    df = cvb_rows().drop(columns="prediction")
    tsv = tmp_path / "CV-Bench-3D.tsv"
    df.assign(image="aGk=").to_csv(tsv, sep="\t", index=False)
    summary = score_file(tsv, "CV-Bench-3D", tmp_path / "random", random_seed=3)
    assert summary["model"] == "random" and summary["rows"] == 4
    extracted = pd.read_csv(tmp_path / "random" / "hits.csv")["extracted"]
    assert set(extracted) <= {"A", "B"}


def test_score_cli_reports_bad_rows_in_one_line(tmp_path, capsys):
    from spatialreasoner.cli import main

    df = srb_rows()
    df.loc[2, "answer"] = "D"  # row 102 has only options A and B
    path = tmp_path / "p.parquet"
    df.to_parquet(path)
    code = main(["score", "--benchmark", "3DSRBench", "--predictions", str(path), "--reference", str(path),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "answer is not one of the row's options" in err and "index 102" in err
    assert not (tmp_path / "o" / "hits.csv").exists()


def test_config_evaluate_section(repo_root):
    import copy

    from spatialreasoner.config import load_config, validate_config
    from spatialreasoner.errors import ConfigError

    config = load_config(repo_root / "config" / "config.yaml")
    # the <answer> content fills the tables; the paper's own protocol (VLMEvalKit's) is scored next to it
    assert config["evaluate"]["protocol"] == ["answer_tag", "vlmevalkit"]
    assert config["evaluate"]["max_new_tokens"] == 512
    assert config["paper"]["3DSRBench"]["SpatialReasoner"]["overall"] == 60.3
    bad = copy.deepcopy(config)
    bad["evaluate"]["models"]["random"] = {"system_prompt": False}
    with pytest.raises(ConfigError, match="random"):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["evaluate"]["protocol"] = "judge"
    with pytest.raises(ConfigError, match="protocol"):
        validate_config(bad)
