"""Annotations, tars and benchmark files that must be refused (naming the file and row, writing nothing), and the
real annotation files' column sets that must be accepted."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from spatialreasoner.data.benchmarks import prepare, validate
from spatialreasoner.data.canonical import canonicalize
from spatialreasoner.data.extract import extract
from spatialreasoner.errors import DataError
from spatialreasoner.synth.generate import BENCH_3DSR, BENCH_CVB, generate

from .conftest import make_tar

COT = "<think>The 3D location of the red cube is (0.10, 0.20, 3.00).</think>\n<answer>B</answer>"


def sft_row(i, **kw):
    """A 3D QA row with exactly the columns the official SFT reader uses (no answer, no category)."""
    row = {
        "question": f"Which object is closer to the camera? ({i})",
        "A": "red cube",
        "B": "blue sphere",
        "C": None,
        "D": None,
        "image_filename": f"img{i}.jpg",
        "answer_cot": COT,
    }
    return row | kw


def rl_row(i, **kw):
    """An RL row with the official RL reader's columns (plus the bounding_box and direction the real rows carry)."""
    row = {
        "question_index": 100 + i,
        "question": f"Which object is closer to the camera? ({i})",
        "A": "red cube",
        "B": "blue sphere",
        "C": None,
        "D": None,
        "answer": "B",
        "answer_name": "blue sphere",
        "category": "location_closer_to_camera",
        "image_filename": f"img{i}.jpg",
        "bounding_box": "[[1, 2, 3, 4]]",
        "direction": "[]",
    }
    return row | kw


@pytest.fixture
def layout(tmp_path):
    oi = tmp_path / "images" / "openimages"
    ll = tmp_path / "images" / "llava"
    oi.mkdir(parents=True)
    (ll / "coco").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 10, 10)).save(oi / f"img{i}.jpg")
    Image.new("RGB", (32, 32), (10, 90, 10)).save(ll / "coco" / "0.jpg")
    return tmp_path, {"image_filename": str(oi), "image_path": str(ll)}


def write(folder, rows, name="train-00000-of-00001.parquet"):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / name)
    return folder


def refused(kind, ann, roots, out, *fragments):
    with pytest.raises(DataError) as info:
        canonicalize(kind, ann, roots, out)
    message = str(info.value)
    assert str(ann) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return message


# ---------------------------------------------------------------- the real files' columns (accepted)


def test_official_sft_columns_suffice_and_the_answer_comes_from_the_chain_of_thought(layout):
    tmp, roots = layout
    rows = [sft_row(0), sft_row(1, answer_cot="<think>x</think><answer>A</answer>")]
    rows = [r | {"conversations": None, "image_path": None} for r in rows]
    rows.append({**dict.fromkeys(sft_row(0)), "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                             {"from": "gpt", "value": "Hello."}],
                 "image_path": "coco/0.jpg"})  # fmt: skip
    ann = write(tmp / "SFT", rows)
    counts = canonicalize("sft", ann, roots, tmp / "sft.parquet")
    assert counts["qa"] == 2 and counts["conversation"] == 1
    df = pd.read_parquet(tmp / "sft.parquet")
    assert list(df["answer"][:2]) == ["B", "A"]
    assert df["category"][:2].isna().all()


def test_sft_answer_text_in_the_tag_is_matched_to_its_letter(layout):
    tmp, roots = layout
    ann = write(tmp / "SFT", [sft_row(0, answer_cot="<think>x</think> <answer>B. blue sphere</answer>\n")])
    canonicalize("sft", ann, roots, tmp / "sft.parquet")
    assert pd.read_parquet(tmp / "sft.parquet")["answer"].tolist() == ["B"]


def test_official_rl_columns_are_kept(layout):
    tmp, roots = layout
    ann = write(tmp / "RL", [rl_row(i) for i in range(3)])
    canonicalize("rl", ann, roots, tmp / "rl.parquet")
    df = pd.read_parquet(tmp / "rl.parquet")
    assert list(df["question_index"]) == [100, 101, 102]
    assert {"answer_name", "bounding_box", "direction"} <= set(df.columns)


# ---------------------------------------------------------------- annotations refused


def test_chain_of_thought_contradicting_the_answer(layout):
    tmp, roots = layout
    ann = write(tmp / "SFT", [sft_row(0, answer="B"), sft_row(1, answer="A")])
    refused("sft", ann, roots, tmp / "o.parquet", "row 1: answer 'A' contradicts the chain-of-thought", "'B'")


@pytest.mark.parametrize(
    "cot",
    ["The answer is B.", "<think>no answer tag</think> B", "<answer>B</answer>", "<answer>B</answer><think>x</think>"],
    ids=["no-tags", "no-answer", "no-think", "wrong-order"],
)
def test_chain_of_thought_without_its_tags(layout, cot):
    tmp, roots = layout
    ann = write(tmp / "SFT", [sft_row(0), sft_row(1, answer_cot=cot)])
    refused("sft", ann, roots, tmp / "o.parquet", "row 1: answer_cot", "is not <think>…</think><answer>…</answer>")


def test_split_held_twice_in_a_snapshot(layout):
    tmp, roots = layout
    ann = write(tmp / "RL" / "all", [rl_row(0)])
    (ann / "train.jsonl").write_text(json.dumps(rl_row(0)) + "\n")
    message = refused(
        "rl", ann.parent, roots, tmp / "o.parquet", "split 'train' is held 2 times", "read more than once"
    )
    assert "all/train.jsonl" in message and "all/train-00000-of-00001.parquet" in message


def test_shards_of_one_split_are_not_a_duplicate(layout):
    tmp, roots = layout
    ann = write(tmp / "RL" / "all", [rl_row(0)], name="train-00000-of-00002.parquet")
    write(ann, [rl_row(1)], name="train-00001-of-00002.parquet")
    assert canonicalize("rl", ann.parent, roots, tmp / "rl.parquet")["rows"] == 2


def test_fractional_question_index(layout):
    tmp, roots = layout
    ann = write(tmp / "RL", [rl_row(0), rl_row(1, question_index=3.7)])
    refused("rl", ann, roots, tmp / "o.parquet", "row 1: question_index 3.7 is not an integer")


def test_unknown_rl_category(layout):
    tmp, roots = layout
    ann = write(tmp / "RL", [rl_row(0), rl_row(1, category="location_abov"), rl_row(2, category="counting")])
    refused(
        "rl",
        ann,
        roots,
        tmp / "o.parquet",
        "2 row(s) have a category",
        "'counting' (rows 2)",
        "'location_abov' (rows 1)",
    )


# ---------------------------------------------------------------- tars refused


@pytest.mark.parametrize("members", [[], [("imgs", "dir", None)]], ids=["no-members", "only-a-folder"])
def test_tar_without_files(tmp_path, members):
    tar = make_tar(tmp_path / "empty.tar", members)
    out = tmp_path / "images"
    with pytest.raises(DataError, match=rf"{tar} holds no files \({len(members)} members\)"):
        extract(tar, out)
    assert not out.exists() and not list(tmp_path.glob(".images.tmp-*"))


def test_hard_link_to_a_missing_member(tmp_path):
    tar = make_tar(tmp_path / "bad.tar", [("imgs/a.jpg", "file", b"a"), ("imgs/b.jpg", "link", "imgs/gone.jpg")])
    out = tmp_path / "images"
    with pytest.raises(DataError, match=r"'imgs/b.jpg' of .*bad.tar is a hard link to 'imgs/gone.jpg'.*missing member"):
        extract(tar, out)
    assert not out.exists() and not list(tmp_path.glob(".images.tmp-*"))


def test_hard_link_to_an_earlier_file_extracts(tmp_path):
    tar = make_tar(tmp_path / "ok.tar", [("imgs/a.jpg", "file", b"a"), ("imgs/b.jpg", "link", "imgs/a.jpg")])
    extract(tar, tmp_path / "images")
    assert (tmp_path / "images/imgs/b.jpg").read_bytes() == b"a"


# ---------------------------------------------------------------- benchmark files


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(
        out,
        {
            "sft": {"train": 1, "val": 1, "conversations": 1},
            "rl": {"train": 1, "val": 1},
            "3DSRBench": {"questions": 12},
            "CV-Bench-3D": {"questions": 8},
        },
    )
    return out


def test_truncated_benchmark_row_is_named(synthetic, tmp_path):
    lines = (synthetic / BENCH_CVB).read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split("\t")
    fields = lines[4].rstrip("\n").split("\t")
    cut = "\t".join(fields[: header.index("answer")]) + "\n"  # the row ends before its answer
    bad = tmp_path / "cut.tsv"
    bad.write_text("".join([*lines[:4], cut, *lines[5:]]))
    out = tmp_path / "out.tsv"
    with pytest.raises(DataError) as info:
        prepare(bad, "CV-Bench-3D", out)
    message = str(info.value)
    assert str(bad) in message and f"row 3 (index {fields[0]})" in message and "fewer than the header's" in message
    assert "missing answer" in message and "unknown category" not in message
    assert not out.exists()


def test_padded_answer_is_stripped_once_at_prepare(synthetic, tmp_path):
    from spatialreasoner.evaluate.score import score_file

    df = pd.read_csv(synthetic / BENCH_CVB, sep="\t", dtype=str, keep_default_na=False)
    padded_row = 2
    df.loc[padded_row, "answer"] = f" {df.loc[padded_row, 'answer']} "
    src = tmp_path / "padded.tsv"
    df.to_csv(src, sep="\t", index=False)
    out = tmp_path / "CV-Bench-3D.tsv"
    assert prepare(src, "CV-Bench-3D", out)["answers_stripped"] == 1
    prepared = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert prepared.loc[padded_row, "answer"] == df.loc[padded_row, "answer"].strip()
    assert prepared.drop(columns="answer").equals(df.drop(columns="answer"))  # nothing else changed
    validate(out, "CV-Bench-3D")
    # scoring the prepared benchmark accepts the row and counts a right answer to it as a hit
    preds = prepared.drop(columns="image").assign(prediction=[f"<answer>{a}</answer>" for a in prepared["answer"]])
    preds.to_parquet(tmp_path / "preds.parquet")
    summary = score_file(tmp_path / "preds.parquet", "CV-Bench-3D", tmp_path / "scores", reference=out)
    assert summary["hits"] == len(prepared)


def test_unpadded_benchmark_is_copied_byte_for_byte(synthetic, tmp_path):
    prepare(synthetic / BENCH_3DSR, "3DSRBench", tmp_path / "b.tsv")
    assert (tmp_path / "b.tsv").read_bytes() == (synthetic / BENCH_3DSR).read_bytes()
