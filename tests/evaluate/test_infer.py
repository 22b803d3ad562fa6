"""Inference on the tiny model: prompt, batching, resumability, bad input, and the .xlsx export."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import openpyxl
import pandas as pd
import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate import infer
from spatialreasoner.evaluate.score import score_file

from .conftest import make_benchmark

FAST = {"max_new_tokens": 6, "batch_size": 4}


def test_prompt_is_the_official_one(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    row = {"question": "Which is closer?", "A": "the cube", "B": "the ball", "C": float("nan"), "D": ""}
    with_sys = processor.apply_chat_template(infer.build_messages(row, "THINK FIRST"), add_generation_prompt=True)
    without = processor.apply_chat_template(infer.build_messages(row, None), add_generation_prompt=True)
    question = (
        "Question: Which is closer?\nOptions:\nA. the cube\nB. the ball\n"
        "Please select the correct answer from the options above."
    )
    assert "<|im_start|>system\nTHINK FIRST<|im_end|>" in with_sys
    assert "THINK FIRST" not in without
    # the image comes before the question
    assert f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>" in with_sys
    assert with_sys.endswith("<|im_start|>assistant\n")


def test_infer_outputs_and_batching(tiny_model_dir, bench_tsv, tmp_path):
    out1 = tmp_path / "bs1" / "3DSRBench.parquet"
    summary = infer.run_inference(tiny_model_dir, bench_tsv, out1, max_new_tokens=6, batch_size=1)
    assert summary["generated"] == 6 and summary["resumed"] == 0
    preds = pd.read_parquet(out1)
    bench = pd.read_csv(bench_tsv, sep="\t")
    assert preds["index"].tolist() == bench["index"].tolist()
    assert "image" not in preds.columns
    for col in [
        "index",
        "qid",
        "question",
        "A",
        "B",
        "C",
        "answer",
        "category",
        "prediction",
        "gen_seconds",
        "gen_tokens",
    ]:
        assert col in preds.columns
    assert preds["prediction"].notna().all()
    assert ((preds["gen_tokens"] >= 1) & (preds["gen_tokens"] <= 6)).all()
    assert (preds["gen_seconds"] > 0).all()
    assert (tmp_path / "bs1" / "3DSRBench.xlsx").is_file()
    # left padding: a batch of rows of different lengths gives what one-by-one generation gives
    out4 = tmp_path / "bs4" / "3DSRBench.parquet"
    infer.run_inference(tiny_model_dir, bench_tsv, out4, max_new_tokens=6, batch_size=4)
    assert pd.read_parquet(out4)["prediction"].tolist() == preds["prediction"].tolist()
    # the parquet and its xlsx export score as they are, to the same hits
    summary = score_file(out4, "3DSRBench", tmp_path / "scores", reference=bench_tsv)
    assert summary["rows"] == 6
    from_xlsx = score_file(out4.with_suffix(".xlsx"), "3DSRBench", tmp_path / "scores-xlsx", reference=bench_tsv)
    assert pd.read_csv(tmp_path / "scores-xlsx" / "hits.csv").equals(pd.read_csv(tmp_path / "scores" / "hits.csv"))
    assert from_xlsx["main"] == summary["main"]


def _write_partial_shard(shard_dir, rows):
    shard_dir.mkdir(parents=True, exist_ok=True)
    with open(shard_dir / "rows-0-old.jsonl", "w") as f:
        for index in rows:
            rec = {"index": index, "prediction": f"SHARD-{index}", "gen_seconds": 0.5, "gen_tokens": 3, "error": None}
            f.write(json.dumps(rec) + "\n")
        f.write('{"index": 15, "predic')  # a line cut short by a kill


def test_resume_generates_only_missing_rows(tiny_model_dir, bench_tsv, tmp_path):
    out = tmp_path / "p" / "3DSRBench.parquet"
    shard_dir = tmp_path / "shards"
    # a first call records the shard settings; then shards from "a killed run" hold rows 10, 11, 13
    infer.prepare_shard_dir(
        shard_dir,
        infer._fingerprint(
            {
                "system_prompt": None,
                "max_new_tokens": 6,
                "min_pixels": None,
                "max_pixels": None,
                "dtype": "auto",
                "backend": "hf",
            },
            tiny_model_dir,
            bench_tsv,
        ),
    )
    _write_partial_shard(shard_dir, [10, 11, 13])
    summary = infer.run_inference(tiny_model_dir, bench_tsv, out, shard_dir=shard_dir, **FAST)
    assert summary["resumed"] == 3 and summary["generated"] == 3
    preds = pd.read_parquet(out).set_index("index")["prediction"]
    assert [preds[i] for i in (10, 11, 13)] == ["SHARD-10", "SHARD-11", "SHARD-13"]
    assert not any(str(preds[i]).startswith("SHARD") for i in (12, 14, 15))
    assert not shard_dir.exists()  # removed once the parquet is written


def test_stale_shards_are_discarded(tiny_model_dir, bench_tsv, tmp_path):
    shard_dir = tmp_path / "shards"
    infer.prepare_shard_dir(
        shard_dir,
        infer._fingerprint(
            {
                "system_prompt": None,
                "max_new_tokens": 99,
                "min_pixels": None,
                "max_pixels": None,
                "dtype": "auto",
                "backend": "hf",
            },
            tiny_model_dir,
            bench_tsv,
        ),
    )
    _write_partial_shard(shard_dir, [10, 11])
    summary = infer.run_inference(tiny_model_dir, bench_tsv, tmp_path / "p.parquet", shard_dir=shard_dir, **FAST)
    assert summary["resumed"] == 0 and summary["generated"] == 6


def test_killed_run_resumes(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, n=40)
    out = tmp_path / "p" / "3DSRBench.parquet"
    shard_dir = tmp_path / "shards"
    cmd = [
        sys.executable,
        "-m",
        "spatialreasoner.cli",
        "infer",
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        str(bench),
        "--out",
        str(out),
        "--shard-dir",
        str(shard_dir),
        "--batch-size",
        "1",
        "--max-new-tokens",
        "48",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = sum(p.read_text().count("\n") for p in shard_dir.glob("*.jsonl")) if shard_dir.exists() else 0
            if lines >= 3:
                break
            assert proc.poll() is None, "inference ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    finished = len(infer.read_shards(shard_dir))
    assert 3 <= finished < 40
    summary = infer.run_inference(tiny_model_dir, bench, out, shard_dir=shard_dir, batch_size=8, max_new_tokens=48)
    assert summary["resumed"] == finished and summary["generated"] == 40 - finished
    assert len(pd.read_parquet(out)) == 40


def test_two_workers_merge_in_benchmark_order(tiny_model_dir, bench_tsv, tmp_path):
    one = tmp_path / "one.parquet"
    two = tmp_path / "two.parquet"
    infer.run_inference(tiny_model_dir, bench_tsv, one, **FAST)
    summary = infer.run_inference(tiny_model_dir, bench_tsv, two, workers=2, **FAST)
    assert summary["workers"] == 2
    a, b = pd.read_parquet(one), pd.read_parquet(two)
    assert b["index"].tolist() == a["index"].tolist()
    assert b["prediction"].tolist() == a["prediction"].tolist()


def test_bad_image_error_names_the_index(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, bad=(3,))
    with pytest.raises(DataError, match="row index 13: image does not decode"):
        infer.run_inference(tiny_model_dir, bench, tmp_path / "p.parquet", **FAST)


def test_bad_image_in_a_parallel_worker_names_the_index(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, bad=(5,))
    with pytest.raises(DataError, match="row index 15: image does not decode"):
        infer.run_inference(tiny_model_dir, bench, tmp_path / "p.parquet", workers=2, **FAST)
    assert not (tmp_path / "p.parquet").exists()


def test_bad_image_skipped_and_counted(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, bad=(3,))
    out = tmp_path / "m" / "3DSRBench.parquet"
    summary = infer.run_inference(tiny_model_dir, bench, out, on_bad_image="skip", **FAST)
    assert summary["skipped_bad_image"] == 1 and summary["generated"] == 5
    preds = pd.read_parquet(out).set_index("index")
    assert pd.isna(preds.loc[13, "prediction"]) and "row index 13" in preds.loc[13, "error"]
    # a skipped row stays in the benchmark's denominator: scored as a miss
    scored = score_file(out, "3DSRBench", tmp_path / "s", reference=bench)
    assert scored["missing_predictions"] == 1
    hits = pd.read_csv(tmp_path / "s" / "hits.csv").set_index("index")
    assert hits.loc[13, "extracted"] == "Z" and not hits.loc[13, "hit"]


def test_image_references_resolve(tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.tsv"
    make_benchmark(bench, refs=(2, 4))
    df = infer.read_benchmark(bench)
    assert df["image"].iloc[2] == df["image"].iloc[0]
    summary = infer.run_inference(tiny_model_dir, bench, tmp_path / "p.parquet", **FAST)
    assert summary["generated"] == 6


def test_model_without_processor(tiny_model_dir, bench_tsv, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    for name in ("preprocessor_config.json", "processor_config.json"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(DataError, match="missing: .*processor"):
        infer.run_inference(broken, bench_tsv, tmp_path / "p.parquet", **FAST)


def test_xlsx_keeps_text_as_text_and_reports_long_cells(tmp_path, caplog):
    preds = pd.DataFrame(
        {
            "index": [1, 2, 3, 4],
            "question": ["=1+1", "@SUM(A1)", "0123", "https://example.com/x"],
            "prediction": ['=HYPERLINK("http://evil")', "+A1", "x" * 40000, "-2"],
        }
    )
    path = tmp_path / "p.xlsx"
    long_cells = infer.export_xlsx(preds, path)
    assert long_cells == [{"index": "3", "column": "prediction", "length": 40000}]
    assert "index 3 column prediction has 40000 characters" in caplog.text
    sheet = openpyxl.load_workbook(path).active
    rows = list(sheet.iter_rows(min_row=2, values_only=False))
    for row in rows:
        for cell in row[1:]:
            assert cell.data_type == "s", (cell.coordinate, cell.value)
    assert rows[0][1].value == "=1+1" and rows[0][2].value == '=HYPERLINK("http://evil")'
    assert rows[2][1].value == "0123"
    long = rows[2][2].value
    assert len(long) <= infer.XLSX_CELL_LIMIT and long.endswith("40000 characters in total; see the parquet]")
    # the scorer reads the export back with the same text
    back = pd.read_excel(path, keep_default_na=False, na_values=[""])
    assert back["question"].tolist()[:3] == ["=1+1", "@SUM(A1)", "0123"]


def test_trained_model_round_trip(tiny_model_dir, bench_tsv, tmp_path):
    """Teach the tiny model one reply on the inference prompt; inference must return exactly it and score it."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    target = "<think>higher</think><answer>A</answer>"
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    df = infer.read_benchmark(bench_tsv)
    texts = [
        processor.apply_chat_template(infer.build_messages(row, None), add_generation_prompt=True)
        + target
        + "<|im_end|>"
        for row in df.to_dict("records")
    ]
    images = [infer.decode_image(cell, i) for cell, i in zip(df["image"], df["index"], strict=True)]
    processor.tokenizer.padding_side = "left"  # every reply ends the row: the loss covers the last n tokens
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    n_reply = len(processor.tokenizer(target + "<|im_end|>")["input_ids"])
    labels = batch["input_ids"].clone()
    labels[:, :-n_reply] = -100
    for name, param in model.named_parameters():
        param.requires_grad = "visual" not in name  # the vision tower need not learn anything here
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(80):  # the tiny model (text hidden 128) needs about 80 steps at this rate
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1
    trained = tmp_path / "trained"
    model.save_pretrained(trained)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(trained)

    out = tmp_path / "trained-model" / "3DSRBench.parquet"
    infer.run_inference(trained, bench_tsv, out, max_new_tokens=40, batch_size=4)
    preds = pd.read_parquet(out)
    assert preds["prediction"].tolist() == [target] * len(df)  # stopped at <|im_end|>, special tokens dropped
    n_tokens = len(processor.tokenizer(target)["input_ids"])
    assert (preds["gen_tokens"] == n_tokens).all()
    summary = score_file(out, "3DSRBench", tmp_path / "scores", reference=bench_tsv)
    assert summary["hits"] == len(df) and summary["main"]["overall"] == 100.0
