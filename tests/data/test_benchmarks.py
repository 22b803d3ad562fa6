"""prepare-benchmark: VLMEvalKit TSV validation, each bad input an error naming the row."""

from __future__ import annotations

import pandas as pd
import pytest

from spatialreasoner.data.benchmarks import prepare, validate
from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.synth.generate import BENCH_3DSR, BENCH_CVB, generate

SMALL = {
    "sft": {"train": 1, "val": 1, "conversations": 1},
    "rl": {"train": 1, "val": 1},
    "3DSRBench": {"questions": 24},
    "CV-Bench-3D": {"questions": 10},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, SMALL)
    return out


def load(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def save(df, path):
    df.to_csv(path, sep="\t", index=False)
    return path


def test_synthetic_benchmarks_validate_and_copy(synthetic, tmp_path):
    counts = prepare(synthetic / BENCH_3DSR, "3DSRBench", tmp_path / "3DSRBench.tsv")
    assert counts["groups"] < counts["rows"]  # circular variants are grouped
    assert (tmp_path / "3DSRBench.tsv").read_bytes() == (synthetic / BENCH_3DSR).read_bytes()
    assert validate(synthetic / BENCH_CVB, "CV-Bench-3D")["rows"] == 10


def test_unknown_benchmark(synthetic):
    with pytest.raises(ConfigError, match=r"unknown benchmark 'MMBench'"):
        validate(synthetic / BENCH_CVB, "MMBench")


def test_missing_columns(synthetic, tmp_path):
    df = load(synthetic / BENCH_3DSR).drop(columns=["qid", "answer"])
    with pytest.raises(DataError, match=r"\(3DSRBench\): missing required columns: answer, qid$"):
        validate(save(df, tmp_path / "b.tsv"), "3DSRBench")


def test_duplicate_index(synthetic, tmp_path):
    df = load(synthetic / BENCH_CVB)
    df.loc[3, "index"] = df.loc[1, "index"]
    with pytest.raises(DataError, match=r"1 row\(s\) have a duplicate index: row 3 \(index 1\) repeats row 1"):
        validate(save(df, tmp_path / "b.tsv"), "CV-Bench-3D")


def test_non_integer_index(synthetic, tmp_path):
    df = load(synthetic / BENCH_CVB)
    df.loc[2, "index"] = "x2"
    with pytest.raises(DataError, match=r"have a non-integer index: row 2 \(index x2\): 'x2'"):
        validate(save(df, tmp_path / "b.tsv"), "CV-Bench-3D")


def test_unknown_category(synthetic, tmp_path):
    df = load(synthetic / BENCH_CVB)
    df.loc[4, "category"] = "Count"
    with pytest.raises(
        DataError, match=r"have an unknown category \(expected one of Depth, Distance\): row 4 .*'Count'"
    ):
        validate(save(df, tmp_path / "b.tsv"), "CV-Bench-3D")


def test_answer_not_an_option(synthetic, tmp_path):
    df = load(synthetic / BENCH_3DSR)
    two = df.index[df["C"] == ""][0]
    df.loc[two, "answer"] = "C"
    with pytest.raises(
        DataError, match=rf"answer that is not one of their options: row {two} .*answer 'C', options \['A', 'B'\]"
    ):
        validate(save(df, tmp_path / "b.tsv"), "3DSRBench")


def test_undecodable_image(synthetic, tmp_path):
    df = load(synthetic / BENCH_CVB)
    df.loc[5, "image"] = "QUJD" * 40  # valid base64 of b"ABC..." but no picture
    df.loc[6, "image"] = "%%%not-base64%%%" * 10
    with pytest.raises(DataError) as err:
        validate(save(df, tmp_path / "b.tsv"), "CV-Bench-3D")
    assert "2 row(s) have a bad image: row 5 (index 5): image does not decode" in str(err.value)
    assert "row 6 (index 6): image is not base64" in str(err.value)


def test_image_reference_to_another_row(synthetic, tmp_path):
    df = load(synthetic / BENCH_CVB)
    df.loc[7, "image"] = "0"  # VLMEvalKit: a short cell names the row whose image to reuse
    validate(save(df, tmp_path / "ok.tsv"), "CV-Bench-3D")
    df.loc[7, "image"] = "999"
    with pytest.raises(DataError, match=r"row 7 \(index 7\): image '999' is neither base64 nor the index"):
        validate(save(df, tmp_path / "b.tsv"), "CV-Bench-3D")


def test_rotation_without_original(synthetic, tmp_path):
    df = load(synthetic / BENCH_3DSR)
    first = df.index[df["qid"] == "synth00000"][0]
    df = df.drop(index=first).reset_index(drop=True)
    with pytest.raises(
        DataError, match=r"circular variants without their original question: .*'synth00000-1' is a rotation"
    ):
        validate(save(df, tmp_path / "b.tsv"), "3DSRBench")


def test_inconsistent_circular_group(synthetic, tmp_path):
    df = load(synthetic / BENCH_3DSR)
    row = df.index[df["qid"] == "synth00000-1"][0]
    df.loc[row, "A"] = "golden dragon"
    with pytest.raises(DataError, match=r"qid 'synth00000-1' differs from 'synth00000' in option set"):
        validate(save(df, tmp_path / "b.tsv"), "3DSRBench")


def test_duplicate_qid(synthetic, tmp_path):
    df = load(synthetic / BENCH_3DSR)
    df.loc[1, "qid"] = df.loc[0, "qid"]
    with pytest.raises(DataError, match=r"invalid or duplicate qid: row 1 .*qid 'synth00000' repeats row 0"):
        validate(save(df, tmp_path / "b.tsv"), "3DSRBench")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"benchmark file .*none.tsv does not exist"):
        validate(tmp_path / "none.tsv", "3DSRBench")
