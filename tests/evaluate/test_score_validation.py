"""score --reference: every benchmark column comes from the benchmark; predictions that disagree are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.score import XLSX_CELL_LIMIT, score_file


def benchmark_rows(n_groups=4):
    """3DSRBench rows in circular groups of two (``qN``, ``qN-1``) over two categories, the answer always A."""
    rows = []
    for g in range(n_groups):
        for k, qid in enumerate((f"q{g}", f"q{g}-1")):
            rows.append(
                {
                    "index": 10 * g + k,
                    "qid": qid,
                    "question": f"Is object {g} higher?",
                    "A": "yes" if k == 0 else "no",
                    "B": "no" if k == 0 else "yes",
                    "answer": "A",
                    "category": "height_higher" if g % 2 == 0 else "location_above",
                    "image": "aGk=",
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def files(tmp_path):
    bench = benchmark_rows()
    bench_tsv = tmp_path / "3DSRBench.tsv"
    bench.to_csv(bench_tsv, sep="\t", index=False)
    # the model answers A everywhere except in the two rows of group q1
    preds = bench.drop(columns="image").assign(prediction="<answer>A</answer>")
    preds.loc[preds["qid"].str.startswith("q1"), "prediction"] = "<answer>B</answer>"
    return tmp_path, bench_tsv, preds


def write(preds, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".xlsx":
        preds.to_excel(path, index=False)
    else:
        preds.to_parquet(path)
    return path


def assert_nothing_written(out):
    assert not out.exists() or not any(out.iterdir())


def test_honest_predictions_score_as_expected(files):
    tmp, bench_tsv, preds = files
    summary = score_file(write(preds, tmp / "m" / "p.parquet"), "3DSRBench", tmp / "s", reference=bench_tsv)
    assert summary["hits"] == 6 and summary["main"]["overall"] == 75.0


@pytest.mark.parametrize(
    "column, value",
    [("answer", "B"), ("question", "Is object 9 higher?"), ("A", "maybe"), ("category", "height_higher"),
     ("qid", "q3-2")],
)  # fmt: skip
def test_prediction_disagreeing_with_the_benchmark_is_refused_naming_rows(files, column, value):
    tmp, bench_tsv, preds = files
    edited = preds.copy()
    rows = [2, 3] if column != "qid" else [7]  # rows of group q1 (location_above); qid: one row moved to a group
    edited.loc[rows, column] = value
    out = tmp / "s"
    with pytest.raises(DataError) as info:
        score_file(write(edited, tmp / "m" / "p.parquet"), "3DSRBench", out, reference=bench_tsv)
    message = str(info.value)
    assert f"column {column} disagrees with the benchmark {bench_tsv}" in message
    assert f"{len(rows)} row(s) differ: index " + ", ".join(str(edited.loc[r, "index"]) for r in rows) in message
    assert "p.parquet" in message
    assert_nothing_written(out)


def test_edited_answers_cannot_raise_the_score(files):
    """Copying the model's letters into the answer column would turn 75.0 into 100.0 if answers came from the file."""
    tmp, bench_tsv, preds = files
    cheat = preds.assign(answer=preds["prediction"].str.extract(r"<answer>(.)</answer>")[0])
    with pytest.raises(DataError, match=r"column answer disagrees.*2 row\(s\) differ: index 10, 11"):
        score_file(write(cheat, tmp / "m" / "p.parquet"), "3DSRBench", tmp / "s", reference=bench_tsv)


def test_benchmark_columns_come_from_the_benchmark(files):
    """A predictions file with only index and prediction scores exactly as the full one: nothing else is read."""
    tmp, bench_tsv, preds = files
    full = score_file(write(preds, tmp / "a" / "p.parquet"), "3DSRBench", tmp / "sa", reference=bench_tsv)
    bare = preds[["index", "prediction"]].sample(frac=1, random_state=0)  # any order
    only = score_file(write(bare, tmp / "b" / "p.parquet"), "3DSRBench", tmp / "sb", reference=bench_tsv)
    assert only["main"] == full["main"] and only["per_row"] == full["per_row"]
    hits = pd.read_csv(tmp / "sb" / "hits.csv")
    assert hits["index"].tolist() == benchmark_rows()["index"].tolist()  # benchmark order
    assert hits["category"].tolist() == benchmark_rows()["category"].tolist()


def test_predictions_without_a_prediction_column(files):
    tmp, bench_tsv, preds = files
    with pytest.raises(DataError, match=r"p.parquet: missing column prediction"):
        score_file(write(preds.drop(columns="prediction"), tmp / "m" / "p.parquet"), "3DSRBench", tmp / "s",
                   reference=bench_tsv)  # fmt: skip


def test_missing_and_duplicate_rows_against_the_reference(files):
    tmp, bench_tsv, preds = files
    with pytest.raises(DataError, match=r"missing benchmark rows of .*3DSRBench.tsv; 1 row\(s\) absent: index 31"):
        score_file(write(preds.iloc[:-1], tmp / "m" / "p.parquet"), "3DSRBench", tmp / "s", reference=bench_tsv)
    doubled = pd.concat([preds, preds.iloc[[0]]])
    with pytest.raises(DataError, match=r"duplicate indices; 1 row\(s\) repeated: index 0"):
        score_file(write(doubled, tmp / "m" / "p.parquet"), "3DSRBench", tmp / "s", reference=bench_tsv)
    assert_nothing_written(tmp / "s")


def test_xlsx_prediction_cut_at_excels_limit_is_scored_with_a_warning(files, caplog):
    tmp, bench_tsv, preds = files
    cut = preds.copy()
    marker = " [cut: 40000 characters in total; see the parquet]"
    cut.loc[0, "prediction"] = ("<think>" + "x" * 40000)[: XLSX_CELL_LIMIT - len(marker)] + marker
    summary = score_file(write(cut, tmp / "m" / "p.xlsx"), "3DSRBench", tmp / "s", reference=bench_tsv)
    assert summary["cut_predictions"] == 1
    assert json.loads((tmp / "s" / "summary.json").read_text())["cut_predictions"] == 1
    assert "1 row(s) hold a prediction cut at Excel's 32767-character cell limit: index 0" in caplog.text
    assert summary["hits"] == 5  # the cut reply has no answer left: row 0 is a miss


def test_cli_refuses_edited_predictions_in_one_line(files):
    tmp, bench_tsv, preds = files
    edited = preds.copy()
    edited.loc[0, "answer"] = "B"
    path = write(edited, tmp / "m" / "p.parquet")
    out = tmp / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "score", "--benchmark", "3DSRBench", "--predictions", str(path),
         "--reference", str(bench_tsv), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "column answer disagrees" in proc.stderr and "index 0" in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(out)


def test_random_baseline_with_a_reference_scores_the_benchmark(files):
    tmp, bench_tsv, _ = files
    a = score_file(bench_tsv, "3DSRBench", tmp / "r1", random_seed=3)
    b = score_file(bench_tsv, "3DSRBench", tmp / "r2", random_seed=3, reference=bench_tsv)
    assert a["main"] == b["main"] and a["rows"] == b["rows"] == 8
