"""Messages that must say what is wrong: a cut JSON-lines annotation names its line, a GPU check that ran nothing
exits non-zero saying why, and a hand-run ``score`` needs the benchmark to check the predictions' answers against."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from spatialreasoner.data.canonical import read_annotations
from spatialreasoner.errors import ConfigError, DataError, SpatialReasonerError


def test_a_cut_jsonl_line_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"question": f"q{i}", "answer": "A"} for i in range(4)]
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2][:15]  # cut
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_annotations([path])
    assert f"annotation file {path}, line 3:" in str(err.value)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank last line is fine
    df = read_annotations([path])
    assert df["question"].tolist() == ["q0", "q1", "q2", "q3"]


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"train\.jsonl, line 2: .*JSON object"):
        read_annotations([path])


def skipped_report():
    rows = [{"stage": "SFT", "variant": "1 process, flash-attn 2", "model": "-", "status": "skipped",
             "reason": "flash-attn needs a CUDA GPU"},
            {"stage": "GRPO", "variant": "generation by vLLM (colocate)", "model": "-", "status": "skipped",
             "reason": "vllm is not installed"}]  # fmt: skip
    return {"header": {"device": "cpu", "versions": "torch"}, "rows": rows, "seconds": 1.0}


def gpu_check_args(**kw):
    return argparse.Namespace(sft_steps=None, grpo_steps=None, budget=60.0, out=None, **kw)


def test_gpu_check_that_ran_no_stage_fails_saying_why(monkeypatch, capsys):
    from spatialreasoner.gpucheck import main as gpucheck

    monkeypatch.setattr(gpucheck, "gpu_check", lambda args: skipped_report())
    with pytest.raises(SpatialReasonerError) as err:
        gpucheck.run(gpu_check_args())
    message = str(err.value)
    assert "no stage ran" in message and "flash-attn needs a CUDA GPU" in message and "vllm is not installed" in message
    assert "skipped" in capsys.readouterr().out  # the table is still printed

    report = skipped_report()
    report["rows"].append({"stage": "SFT", "variant": "1 process, sdpa", "model": "tiny", "status": "ok"})
    monkeypatch.setattr(gpucheck, "gpu_check", lambda args: report)
    assert gpucheck.run(gpu_check_args()) == 0


def test_score_by_hand_without_the_benchmark_is_refused(tmp_path, capsys):
    from spatialreasoner.cli import main

    path = tmp_path / "p.parquet"
    pd.DataFrame({"index": [0], "question": ["q"], "A": ["a"], "B": ["b"], "answer": ["A"], "category": ["Depth"],
                  "prediction": ["A"]}).to_parquet(path)  # fmt: skip
    code = main(["score", "--benchmark", "CV-Bench-3D", "--predictions", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--reference" in err and "own answers" in err
    assert not (tmp_path / "o").exists()


def test_score_without_reference_is_a_config_error_in_run(tmp_path):
    from spatialreasoner.evaluate import score

    args = argparse.Namespace(predictions="p.parquet", benchmark="CV-Bench-3D", out=str(tmp_path / "o"),
                              protocol="answer_tag", model=None, reference=None, random_seed=None, judged=None)  # fmt: skip
    with pytest.raises(ConfigError, match="--reference"):
        score.run(args)
