"""The canary: the same question text under paired pictures with opposite answers, written as a benchmark and as
SFT rows, and scored like the other benchmarks."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from spatialreasoner.data.benchmarks import validate
from spatialreasoner.errors import ConfigError
from spatialreasoner.evaluate.checkpoints import checkpoint_table
from spatialreasoner.evaluate.score import score_file
from spatialreasoner.evaluate.tables import CANARY_NOTE, CHANCE, csv_columns, read_table_csv, write_tables
from spatialreasoner.synth.canary import canary_items
from spatialreasoner.synth.generate import BENCH_CANARY, SFT_DIR, generate, resolve_config
from spatialreasoner.synth.render import render

SMALL = {
    "sft": {"train": 6, "val": 2, "conversations": 2},
    "rl": {"train": 4, "val": 2},
    "3DSRBench": {"questions": 4},
    "CV-Bench-3D": {"questions": 4},
}


def items(pairs=6):
    return list(canary_items(112, pairs, lambda i: np.random.default_rng([0, 8, i])))


def test_question_text_alone_gives_chance_and_the_picture_decides():
    found = items()
    by_text = defaultdict(list)
    for item in found:
        by_text[(item.question.question, item.question.options)].append(item)
    assert len(by_text) == 6
    for group in by_text.values():
        # the best guess from the text alone (its most frequent answer) is right for exactly half of its pictures
        answers = Counter(item.question.answer_letter for item in group)
        assert sorted(answers.values()) == [1, 1], answers
        pictures = [np.asarray(render(item.scene)) for item in group]
        assert np.abs(pictures[0].astype(int) - pictures[1]).mean() > 1.0  # the pictures differ


def test_the_answer_is_the_object_nearer_to_the_camera():
    for item in items():
        q = item.question
        named = [next(o for o in item.scene.objects if o.name == option) for option in q.options]
        nearer = min(range(2), key=lambda k: float(np.linalg.norm(named[k].location)))
        assert q.answer == nearer
        # the reply is one sentence ending on the side of the nearer object (option A is the left one), then the letter
        side = "left" if named[nearer].center[0] < named[1 - nearer].center[0] else "right"
        assert q.answer_cot() == (
            f"<think>The nearer object is on the {side}.</think>\n<answer>{q.answer_letter}</answer>"
        )
        assert (side == "left") == (q.answer_letter == "A")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("canary-synth")
    generate(out, {**SMALL, "canary": {"pairs": 3, "repeats": 4}})
    return out


def test_generate_writes_a_valid_canary_benchmark_and_repeated_sft_rows(synthetic):
    assert validate(synthetic / BENCH_CANARY, "Canary")["rows"] == 6
    bench = pd.read_csv(synthetic / BENCH_CANARY, sep="\t")
    sft = pd.read_parquet(synthetic / SFT_DIR / "all" / "train-00000-of-00001.parquet")
    canary_rows = sft[sft["category"] == "nearer_object"]
    assert len(canary_rows) == 6 * 4
    # every benchmark row is an SFT row (question, options, answer), each repeated 4 times
    keys = Counter(zip(canary_rows["question"], canary_rows["A"], canary_rows["B"], canary_rows["answer"], strict=True))
    assert set(keys.values()) == {4}
    assert set(keys) == set(zip(bench["question"], bench["A"], bench["B"], bench["answer"], strict=True))


def test_no_repeats_keeps_the_canary_out_of_the_sft_data(tmp_path):
    generate(tmp_path, {**SMALL, "canary": {"pairs": 2, "repeats": 0}})
    sft = pd.read_parquet(tmp_path / SFT_DIR / "all" / "train-00000-of-00001.parquet")
    assert "nearer_object" not in set(sft["category"].dropna())
    assert len(pd.read_csv(tmp_path / BENCH_CANARY, sep="\t")) == 4


@pytest.mark.parametrize(("canary", "key"), [({"pairs": 0}, "pairs"), ({"repeats": -1}, "repeats"), ({"x": 1}, "x")])
def test_bad_canary_settings_name_the_key(canary, key):
    with pytest.raises(ConfigError, match=rf"synthetic\.canary.*{key}"):
        resolve_config({"canary": canary})


def test_canary_is_tabled_like_the_other_benchmarks(tmp_path, synthetic):
    tsv = synthetic / BENCH_CANARY
    bench = pd.read_csv(tsv, sep="\t").drop(columns="image")
    answers = bench["answer"].tolist()
    models = {"memorised": answers, "always-A": ["A"] * len(answers)}
    scores = {}
    for name, letters in models.items():
        path = tmp_path / "pred" / name / "Canary.parquet"
        path.parent.mkdir(parents=True)
        bench.assign(prediction=[f"<answer>{a}</answer>" for a in letters]).to_parquet(path)
        score_file(path, "Canary", tmp_path / "scores" / name, reference=tsv)
        scores[name] = tmp_path / "scores" / name
    written = write_tables({"Canary": scores}, {"Canary": tsv}, tmp_path / "tables", resamples=200)
    table = read_table_csv(written["Canary"], "Canary").set_index("model")
    assert csv_columns("Canary")[:6] == [
        "model",
        "rows",
        "unmatched (%)",
        "overall",
        "overall ci_low",
        "overall ci_high",
    ]
    assert table.loc["memorised", "overall"] == 100.0
    assert table.loc["always-A", "overall"] == 50.0  # the text alone: half of every pair
    assert table.loc[CHANCE, "overall"] == 50.0
    assert table["rows"].tolist() == [6, 6, 6]
    assert CANARY_NOTE in written["summary"].read_text()

    curve = checkpoint_table(
        [("run", 0, "Canary", scores["always-A"]), ("run", 10, "Canary", scores["memorised"])],
        {"Canary": tsv},
        tmp_path / "checkpoints.csv",
        resamples=200,
    )
    assert curve["metric"].tolist() == ["overall", "overall"]
    assert curve["accuracy"].tolist() == [50.0, 100.0]


def test_canary_rows_reach_the_canonical_sft_table(tmp_path, synthetic):
    from spatialreasoner.cli import main

    images = tmp_path / "images"
    assert main(["extract", "--tar", str(synthetic / "openimages.tar"), "--out", str(images / "openimages")]) == 0
    assert main(["extract", "--tar", str(synthetic / "llava.tar"), "--out", str(images / "llava")]) == 0
    out = tmp_path / "sft.parquet"
    args = ["canonicalize", "--kind", "sft", "--annotations", str(synthetic / SFT_DIR), "--images",
            f"image_filename={images / 'openimages/openimages'}", f"image_path={images / 'llava/llava'}",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    sft = pd.read_parquet(out)
    canary = sft[sft["category"] == "nearer_object"]
    assert len(canary) == 6 * 4
    assert canary["image"].str.contains("canary-").all()
    assert canary["answer_cot"].str.contains("<answer>").all()
