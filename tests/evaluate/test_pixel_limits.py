"""Which image-processor pixel limits every evaluated row used: recorded by inference, repeated in the score's
summary.json, and shown per row in the tables' summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from spatialreasoner.evaluate import infer
from spatialreasoner.evaluate.score import score_file
from spatialreasoner.evaluate.tables import write_tables
from spatialreasoner.modeling import load_processor

from .conftest import make_benchmark

QWEN = (3136, 12845056)


def test_inference_records_the_limits_it_used(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, n=2)
    own = infer.processor_pixel_limits(tiny_model_dir, None, None)
    assert own == (28 * 28 * 4, 28 * 28 * 25)  # the tiny model folder's own settings
    assert infer.processor_pixel_limits(tiny_model_dir, *QWEN) == QWEN
    out = tmp_path / "preds.parquet"
    infer.run_inference(tiny_model_dir, bench, out, max_new_tokens=2, batch_size=2, max_pixels=QWEN[1])
    preds = pd.read_parquet(out)
    assert preds["min_pixels"].tolist() == [own[0]] * 2 and preds["max_pixels"].tolist() == [QWEN[1]] * 2

    summary = score_file(out, "3DSRBench", tmp_path / "score", reference=bench)
    assert (summary["min_pixels"], summary["max_pixels"]) == (own[0], QWEN[1])
    assert json.loads((tmp_path / "score" / "summary.json").read_text())["max_pixels"] == QWEN[1]

    # A second row without recorded limits (an older predictions file): shown as unknown, not invented.
    old = tmp_path / "old.parquet"
    preds.drop(columns=["min_pixels", "max_pixels"]).to_parquet(old)
    score_file(old, "3DSRBench", tmp_path / "score-old", reference=bench, model="old")
    written = write_tables(
        {"3DSRBench": {"new": tmp_path / "score", "old": tmp_path / "score-old"}},
        {"3DSRBench": bench},
        tmp_path / "tables",
        resamples=100,
    )
    text = written["summary"].read_text()
    assert f"| 3DSRBench | new | answer_tag | – | {own[0]}–{QWEN[1]} |" in text
    assert "| 3DSRBench | old | answer_tag | – | – |" in text


def test_a_trained_model_is_evaluated_at_its_released_counterparts_limits(tiny_model_dir, tmp_path):
    """``pixels_from``: the limits come from another folder's image processor (the released counterpart's), read when
    inference starts, and the score's summary and the tables name them and the folder."""
    import shutil

    counterpart = tmp_path / "ccvl-Counterpart"
    shutil.copytree(tiny_model_dir, counterpart)
    ships = (28 * 28 * 6, 28 * 28 * 9)  # other limits than the trained folder's own
    load_processor(tiny_model_dir, *ships).save_pretrained(counterpart)  # the counterpart's processor files
    assert infer.processor_pixel_limits(counterpart, None, None) == ships
    assert infer.processor_pixel_limits(tiny_model_dir, None, None) != ships

    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, n=2)
    out = tmp_path / "preds.parquet"
    infer.run_inference(tiny_model_dir, bench, out, max_new_tokens=2, batch_size=2, pixels_from=counterpart)
    preds = pd.read_parquet(out)
    assert preds["min_pixels"].tolist() == [ships[0]] * 2 and preds["max_pixels"].tolist() == [ships[1]] * 2
    assert preds["pixels_from"].tolist() == ["ccvl-Counterpart"] * 2
    summary = score_file(out, "3DSRBench", tmp_path / "score", reference=bench, model="trained")
    assert (summary["min_pixels"], summary["max_pixels"], summary["pixels_from"]) == (*ships, "ccvl-Counterpart")
    written = write_tables({"3DSRBench": {"trained": tmp_path / "score"}}, {"3DSRBench": bench}, tmp_path / "t",
                           resamples=10)  # fmt: skip
    assert f"| 3DSRBench | trained | answer_tag | – | {ships[0]}–{ships[1]} (ccvl-Counterpart's) |" in (
        written["summary"].read_text()
    )


def test_counterpart_limits_and_explicit_limits_together_are_refused(tiny_model_dir, tmp_path):
    from spatialreasoner.errors import DataError

    with pytest.raises(DataError, match="pixel limits from .* and explicit --min-pixels/--max-pixels both given"):
        infer.run_inference(tiny_model_dir, tmp_path / "b.tsv", tmp_path / "p.parquet", max_pixels=QWEN[1],
                            pixels_from=tiny_model_dir)  # fmt: skip
