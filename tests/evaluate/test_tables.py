"""Tables from per-row hits: hand-computed accuracies, chance, bootstrap intervals, paired differences, bad input."""

import numpy as np
import pandas as pd
import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate import intervals
from spatialreasoner.evaluate.score import score_file
from spatialreasoner.evaluate.tables import CHANCE, CVB_MEAN, CVB_POOLED, csv_columns, read_table_csv, write_tables

COLORS = {"A": "red", "B": "blue", "C": "green", "D": "white"}
# (qid, category, n_options, answer, prediction) -- groups q1, q2, q1-flip, q3, q4
SRB_SPEC = [
    ("q1", "height_higher", 2, "A", "<answer>A</answer>"),
    ("q1-1", "height_higher", 2, "B", "B"),
    ("q2", "height_higher", 2, "A", "A"),
    ("q2-1", "height_higher", 2, "B", "A"),  # miss: group q2 fails
    ("q1-flip", "height_higher", 2, "B", "B"),
    ("q1-flip-1", "height_higher", 2, "A", "A"),
    ("q3", "location_above", 4, "C", "no letter here"),  # unmatched
    ("q4", "multi_object_facing", 3, "C", "C"),
    ("q4-1", "multi_object_facing", 3, "A", "A"),
    ("q4-2", "multi_object_facing", 3, "B", "B"),
]
CVB_SPEC = [("Depth", "A", "A"), ("Depth", "B", "B"), ("Depth", "A", "B"), ("Distance", "B", "B")]


def srb_frame():
    rows = []
    for i, (qid, cat, n, answer, pred) in enumerate(SRB_SPEC):
        row = {"index": 100 + i, "qid": qid, "question": f"question {i}", "category": cat, "answer": answer}
        row |= {letter: (COLORS[letter] if j < n else None) for j, letter in enumerate("ABCD")}
        rows.append(row | {"prediction": pred})
    return pd.DataFrame(rows)


def cvb_frame():
    return pd.DataFrame(
        [
            {"index": i, "question": "q", "A": "red", "B": "blue", "answer": a, "category": c, "prediction": p}
            for i, (c, a, p) in enumerate(CVB_SPEC)
        ]
    )


def write_case(tmp_path, models):
    """Benchmark TSVs and score folders of ``models``: name -> function(frame) -> predictions."""
    benchmarks, scores = {}, {"3DSRBench": {}, "CV-Bench-3D": {}}
    for bench, frame in (("3DSRBench", srb_frame()), ("CV-Bench-3D", cvb_frame())):
        tsv = tmp_path / f"{bench}.tsv"
        frame.drop(columns="prediction").assign(image="aGk=").to_csv(tsv, sep="\t", index=False)
        benchmarks[bench] = tsv
        for name, predict in models.items():
            preds = frame.assign(prediction=predict(frame))
            path = tmp_path / "pred" / name / f"{bench}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            preds.to_parquet(path)
            score_file(path, bench, tmp_path / "scores" / name / bench, reference=tsv)
            scores[bench][name] = tmp_path / "scores" / name / bench
    return scores, benchmarks


MODELS = {"ours": lambda f: f["prediction"], "base": lambda f: ["A"] * len(f)}


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path, MODELS)


def test_tables_hand_computed(tmp_path, case):
    scores, benchmarks = case
    paper = {
        "3DSRBench": {"PaperOurs": {"overall": 60.3, "height": 52.5}, "PaperOther": {"overall": 1.0}},
        "CV-Bench-3D": {"PaperOurs": {"overall": 70.0}},
    }
    written = write_tables(scores, benchmarks, tmp_path / "tables", paper, {"ours": "PaperOurs"}, [("ours", "base")])
    srb = pd.read_csv(written["3DSRBench"]).set_index("model")
    assert srb.columns.tolist() == csv_columns("3DSRBench")[1:]
    assert srb.index.tolist() == ["ours", "base", CHANCE]
    # circular: q1, q1-flip, q4 all right; q2 and q3 not -> 3/5
    assert srb.loc["ours", "overall"] == 60.0 and srb.loc["ours", "height"] == 66.7
    assert srb.loc["ours", ["rows", "groups"]].tolist() == [10, 5]
    assert srb.loc["ours", "unmatched (%)"] == 10.0 and srb.loc["base", "unmatched (%)"] == 0.0
    # chance of a group: product of 1/k over its rows: 1/4 for the four 2-row or 4-option groups, 1/27 for q4
    assert srb.loc[CHANCE, "overall"] == pytest.approx(100 * (4 * 0.25 + 1 / 27) / 5, abs=0.05)
    assert srb.loc[CHANCE, "multi_object_facing"] == pytest.approx(100 / 27, abs=0.05)
    per_row = pd.read_csv(written["3DSRBench_per_row"]).set_index("model")
    assert per_row.loc["ours", "overall"] == 80.0 and per_row.loc["base", "overall"] == 40.0
    assert per_row.loc[CHANCE, "overall"] == pytest.approx(100 * (6 * 0.5 + 0.25 + 3 / 3) / 10, abs=0.05)
    cvb = pd.read_csv(written["CV-Bench-3D"]).set_index("model")
    assert cvb.loc["ours", CVB_POOLED] == 75.0  # 3 of 4 questions
    assert cvb.loc["ours", CVB_MEAN] == 83.3  # (2/3 + 1/1) / 2
    assert cvb.loc[CHANCE, [CVB_POOLED, CVB_MEAN, "Depth"]].tolist() == [50.0, 50.0, 50.0]
    for table in (srb, per_row, cvb):  # every interval holds its estimate
        for col in [c for c in table.columns if f"{c} ci_low" in table.columns]:
            ok = table[col].isna() | ((table[f"{col} ci_low"] <= table[col]) & (table[col] <= table[f"{col} ci_high"]))
            assert ok.all(), col
    md = written["summary"].read_text()
    assert "| ours | PaperOurs | 10 | 5 | 10.0 | 60.0 [" in md
    assert "| 60.3 | -0.3 |" in md and "| 52.5 | +14.2 |" in md
    assert "| 70.0 | +5.0 |" in md  # CV-Bench-3D's published overall is the pooled one
    assert "Published but not evaluated here: PaperOther." in md
    assert "| ours - base | +60.0 [" in md and f"| ours - {CHANCE} |" in md


def test_intervals_are_seeded_and_paired(tmp_path, case):
    scores, benchmarks = case
    a = write_tables(scores, benchmarks, tmp_path / "a", seed=1)
    b = write_tables(scores, benchmarks, tmp_path / "b", seed=1)
    c = write_tables(scores, benchmarks, tmp_path / "c", seed=2)
    assert a["3DSRBench"].read_bytes() == b["3DSRBench"].read_bytes()
    ta, tc = pd.read_csv(a["3DSRBench"]), pd.read_csv(c["3DSRBench"])
    assert ta["overall"].tolist() == tc["overall"].tolist()  # the estimates do not depend on the seed
    assert (intervals.resample_counts(50, 20, 1) == intervals.resample_counts(50, 20, 1)).all()
    assert (intervals.resample_counts(50, 20, 1) != intervals.resample_counts(50, 20, 2)).any()
    # a model compared with itself differs by exactly 0 in every resample
    counts = intervals.resample_counts(5, 500, seed=0)
    hits = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    same = intervals.paired_difference(hits, hits, np.ones(5), counts)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_has_the_binomial_width():
    rng = np.random.default_rng(0)
    hits = (rng.random(400) < 0.6).astype(float)
    counts = intervals.resample_counts(400, 2000, seed=3)
    assert (counts.sum(axis=1) == 400).all()
    est = intervals.ratio(hits, np.ones(400), counts)
    half = 1.96 * np.sqrt(est.value / 100 * (1 - est.value / 100) / 400) * 100  # normal approximation, ~4.8
    assert est.low < est.value < est.high
    assert abs((est.high - est.low) / 2 - half) < 0.8
    # a model right everywhere gets the exact binomial interval (every resample agrees)
    assert intervals.ratio(np.ones(400), np.ones(400), counts).as_text() == "100.0 [99.1, 100.0]"
    assert np.isnan(intervals.ratio(hits, np.ones(400), counts, mask=np.zeros(400, bool)).value)


def _damage(path, how):
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "cut":  # cut inside the last row
        path.write_text(text[: len(text) - len(lines[-1]) // 2 - 1])
    elif how == "row_missing":
        path.write_text("".join(lines[:-1]))
    elif how == "hit_edited":  # a miss turned into a hit
        df = pd.read_csv(path)
        df.loc[df["hit"].eq(False).idxmax(), "hit"] = True
        df.to_csv(path, index=False)
    elif how == "category_edited":
        df = pd.read_csv(path)
        df.loc[0, "category"] = "location_above"
        df.to_csv(path, index=False)
    elif how == "not_a_bool":
        df = pd.read_csv(path).astype({"hit": object})
        df.loc[1, "hit"] = "yes"
        df.to_csv(path, index=False)
    elif how == "extra_row":
        path.write_text(text + "999,q9,height_higher,A,True\n")
    elif how == "column_missing":
        pd.read_csv(path).drop(columns="extracted").to_csv(path, index=False)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("empty", "cannot read as a hits CSV"),
        ("cut", "column hit must be True or False|absent"),
        ("row_missing", r"9 rows, expected 10; 1 row\(s\) absent: index 109"),
        ("hit_edited", "hit disagrees with the extracted letter"),
        ("category_edited", r"category differs from the benchmark's; 1 row\(s\) affected: index 100"),
        ("not_a_bool", r"column hit must be True or False; 1 row\(s\) with another value: index 101"),
        ("extra_row", r"1 row\(s\) not in the benchmark: index 999"),
        ("column_missing", r"missing column\(s\) extracted"),
    ],
)
def test_a_damaged_hits_file_is_named_and_nothing_is_written(tmp_path, case, how, message):
    scores, benchmarks = case
    hits = scores["3DSRBench"]["ours"] / "hits.csv"
    _damage(hits, how)
    out = tmp_path / "tables"
    with pytest.raises(DataError, match=rf"{hits}: .*({message})"):
        write_tables(scores, benchmarks, out)
    assert not out.exists() or not any(out.iterdir())


def test_cli_reports_a_damaged_file_in_one_line(tmp_path, case, capsys):
    from spatialreasoner.cli import main

    scores, benchmarks = case
    hits = scores["CV-Bench-3D"]["base"] / "hits.csv"
    hits.write_bytes(b"")
    args = ["tables", "--out", str(tmp_path / "t")]
    args += [f"--benchmark={b}={p}" for b, p in benchmarks.items()]
    args += [f"--score={b}:{m}={d}" for b, by in scores.items() for m, d in by.items()]
    good = [a for a in args if "CV-Bench-3D:base" not in a]
    assert main([*good, "--paper", '{"CV-Bench-3D": {"P": {"overall": 70.0}}}', "--paper-names", '{"ours": "P"}']) == 0
    table = pd.read_csv(tmp_path / "t" / "CV-Bench-3D.csv")
    assert table["model"].tolist() == ["ours", CHANCE] and table.loc[0, CVB_POOLED] == 75.0
    assert "| ours | P | 4 | 0.0 | 75.0 [" in (tmp_path / "t" / "summary.md").read_text()
    (tmp_path / "t").rename(tmp_path / "t-good")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{hits}: cannot read as a hits CSV" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_written_tables_are_checked_when_read(tmp_path, case):
    scores, benchmarks = case
    written = write_tables(scores, benchmarks, tmp_path / "tables")
    assert read_table_csv(written["CV-Bench-3D"], "CV-Bench-3D")["model"].tolist() == ["ours", "base", CHANCE]
    path = written["CV-Bench-3D"]
    text = path.read_text()
    path.write_text(text[:-20])  # the last row cut
    n_fields = len(csv_columns("CV-Bench-3D"))
    with pytest.raises(DataError, match=rf"{path}: line\(s\) 3 do not have {n_fields} fields"):
        read_table_csv(path, "CV-Bench-3D")
    path.write_text(text.replace("ours,4,0.0,75.0,", "ours,4,0.0,7,", 1))  # 75.0 cut to 7
    with pytest.raises(DataError, match=rf"{path}: column overall \(pooled\) lies outside its own interval for ours"):
        read_table_csv(path, "CV-Bench-3D")


def test_every_table_row_names_its_protocol_and_the_rows_a_judge_decided(tmp_path):
    from spatialreasoner.evaluate.judge import judge_predictions

    scores, benchmarks = write_case(tmp_path, MODELS)
    bench, tsv = "3DSRBench", benchmarks["3DSRBench"]
    preds = tmp_path / "pred" / "ours" / f"{bench}.parquet"
    # no judge endpoint: the exact matcher on the whole reply, undecided rows missed
    judge_predictions(preds, tsv, tmp_path / "nojudge.parquet", tmp_path / "c.jsonl", judge_model=None)
    score_file(preds, bench, tmp_path / "s" / "nojudge", protocol="vlmevalkit", reference=tsv,
               judged=tmp_path / "nojudge.parquet")  # fmt: skip
    # a judge that decided two rows (its file as `spatialreasoner judge` writes it)
    judged = pd.read_parquet(tmp_path / "nojudge.parquet")
    undecided = judged.index[judged["exact"].isna()][:2]
    judged.loc[undecided, ["judged", "letter"]] = [True, "A"]
    judged["judge_model"] = "some-judge"
    judged.to_parquet(tmp_path / "judged.parquet")
    score_file(preds, bench, tmp_path / "s" / "judged", protocol="vlmevalkit", reference=tsv,
               judged=tmp_path / "judged.parquet")  # fmt: skip
    rows = {"ours": scores[bench]["ours"], "ours [vlmevalkit]": tmp_path / "s" / "nojudge"}
    rows["ours [judged]"] = tmp_path / "s" / "judged"
    written = write_tables({bench: rows}, {bench: tsv}, tmp_path / "tables")
    table = read_table_csv(written[bench], bench).set_index("model")
    assert table.columns[-2:].tolist() == ["protocol", "judged rows"]
    assert table.loc["ours", "protocol"] == "answer_tag" and table.loc["ours", "judged rows"] == 0
    assert table.loc["ours [vlmevalkit]", "protocol"] == "vlmevalkit (no judge)"
    assert table.loc["ours [vlmevalkit]", "judged rows"] == 0
    assert table.loc["ours [judged]", "protocol"] == "vlmevalkit" and table.loc["ours [judged]", "judged rows"] == 2
    assert pd.isna(table.loc[CHANCE, "protocol"]) and pd.isna(table.loc[CHANCE, "judged rows"])
    summary = written["summary"].read_text()
    assert "| protocol | judged rows |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| ours [vlmevalkit] |"))
    assert row.endswith("| `vlmevalkit (no judge)` | 0 |")
    assert "judge: no judge" in summary and "judge: some-judge" in summary
