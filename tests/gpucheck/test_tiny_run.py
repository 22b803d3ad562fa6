"""``spatialreasoner gpu-check --tiny`` end to end on the CPU: every stage's row, checked against its own outputs."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

# One run of every stage (two vLLM engine starts among them): a few minutes on a quiet 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]


@pytest.fixture(scope="module")
def report(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("gpu-check") / "report.json"
    # A generous budget: the check is of the figures, not of this machine's speed.
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "gpu-check", "--tiny", "--budget", "3000", "--out", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    data["stdout"] = proc.stdout
    data["markdown"] = out.with_suffix(".md").read_text()
    return data


def _row(report, stage, variant_start):
    rows = [r for r in report["rows"] if r["stage"] == stage and r["variant"].startswith(variant_start)]
    assert len(rows) == 1, [(r["stage"], r["variant"]) for r in report["rows"]]
    return rows[0]


def _installed(module):
    return importlib.util.find_spec(module) is not None


def test_sft_row_figures_follow_from_its_steps(report):
    row = _row(report, "SFT", "1 process, sdpa")
    assert row["status"] == "ok", row["reason"]
    f = row["figures"]
    assert f["loss_finite"] and len(f["losses"]) == f["steps"] == 6
    # A random model's first loss is near ln(vocabulary).
    assert abs(f["loss_first"] - math.log(f["vocab_size"])) < 1.0
    assert f["gradient_checkpointing"] is True and f["attn"] == "sdpa"
    measured = f["step_times"][2:]
    assert f["measured_steps"] == len(measured) == 4
    assert f["tokens_per_second"] == pytest.approx(f["batch"] * f["tokens_per_sample"] * 4 / sum(measured), rel=1e-3)
    assert f["samples_per_second"] == pytest.approx(f["batch"] * 4 / sum(measured), rel=1e-2)
    assert f["tokens_per_sample"] == f["max_length"] == 256  # answers fill the recipe's length exactly
    assert f["mfu"] is None and "unknown" in row["MFU"]  # no bf16 peak for a CPU
    assert f["achieved_tflops"] > 0 and f["peak_gib"] > 0


def test_rows_for_missing_packages_are_skipped_with_the_reason(report):
    flash = _row(report, "SFT", "1 process, flash-attn")
    zero3 = _row(report, "SFT", "accelerate + DeepSpeed ZeRO-3")
    if not _installed("flash_attn"):
        assert (flash["status"], flash["reason"]) == ("skipped", "flash-attn is not installed")
    else:
        assert (flash["status"], flash["reason"]) == ("skipped", "flash-attn needs a CUDA GPU")
    assert flash["reason"] in report["markdown"] and flash["reason"] in report["stdout"]
    if not _installed("deepspeed"):
        assert (zero3["status"], zero3["reason"]) == ("skipped", "deepspeed is not installed")
        assert zero3["reason"] in report["markdown"] and zero3["reason"] in report["stdout"]


def test_zero3_row_runs_deepspeed_stage_3_on_two_cpu_processes(report):
    zero3 = _row(report, "SFT", "accelerate + DeepSpeed ZeRO-3")
    assert _installed("deepspeed"), "the CPU lock installs DeepSpeed (bash scripts/setup.sh)"
    assert zero3["status"] == "ok", zero3["reason"]
    f = zero3["figures"]
    # The stage DeepSpeed's engine ran, with the parameters sharded over two CPU processes.
    assert f["deepspeed_zero_stage"] == f["deepspeed_zero_stage_requested"] == 3 and f["processes"] == 2
    assert f["loss_finite"] and len(f["losses"]) == f["steps"] == 6 and f["gradient_checkpointing"] is True
    assert "ZeRO stage 3 as run by DeepSpeed over 2 process(es)" in zero3["details"]
    assert zero3["details"] in report["markdown"].replace("\\|", "|")


def test_grpo_row_splits_step_time(report):
    row = _row(report, "GRPO", "generation by transformers")
    assert row["status"] == "ok", row["reason"]
    f = row["figures"]
    assert f["loss_finite"] and f["steps"] == 2 and f["completions_per_step"] == 4
    parts = f["generation_seconds"] + f["scoring_seconds"] + f["update_seconds"]
    assert parts == pytest.approx(f["seconds_per_step"], rel=1e-3)
    assert 0 < f["generation_seconds"] < f["seconds_per_step"] and f["update_seconds"] > 0
    assert 0 < f["mean_completion_tokens"] <= 16


def test_grpo_vllm_row_ran_or_says_why(report):
    row = _row(report, "GRPO", "generation by vLLM")
    if not _installed("vllm"):
        assert (row["status"], row["reason"]) == ("skipped", "vllm is not installed")
        return
    # vLLM's CPU build runs colocated GRPO here (tests/train/test_vllm_colocate.py), so the row must too.
    assert row["status"] == "ok", row["reason"]
    assert row["figures"]["loss_finite"] and row["figures"]["generation"] == "vllm-colocate"
    assert row["figures"]["generation_seconds"] > 0 and row["figures"]["update_seconds"] > 0


def test_inference_rows_and_agreement_come_from_real_outputs(report):
    official = _row(report, "inference", "transformers, batch 36")
    best = _row(report, "inference", "transformers, best batch")
    assert official["status"] == best["status"] == "ok", official["reason"]
    f = official["figures"]
    sweep = {s["batch"]: s for s in f["sweep"] if s["status"] == "ok"}
    assert sweep[36]["rows_per_second"] == pytest.approx(36 / sweep[36]["seconds"], rel=1e-2)
    assert f["rows_per_second"] == sweep[36]["rows_per_second"] > 0
    assert f["best_rows_per_second"] == max(s["rows_per_second"] for s in sweep.values())
    vllm = _row(report, "inference", "vLLM")
    if not _installed("vllm"):
        assert vllm["status"] == "skipped"
        return
    assert vllm["status"] == "ok", vllm["reason"]
    v = vllm["figures"]
    assert v["rows_per_second"] > 0
    ids = v["compared_ids"]
    assert len(ids["transformers"]) == len(ids["vllm"]) == 36
    assert any(ids["vllm"]) and any(ids["transformers"])
    from spatialreasoner.gpucheck.inference import agreement

    assert v["agreement"] == agreement(ids["transformers"], ids["vllm"])
    assert f"{v['agreement']['identical_rows']} identical" in vllm["details"]


def test_report_files_hold_the_printed_table(report):
    statuses = [r["status"] for r in report["rows"]]
    assert statuses.count("ok") >= 4
    for r in report["rows"]:
        assert f"| {r['stage']} | {r['variant']} |" in report["markdown"].replace("\\|", "|")
        assert r["variant"] in report["stdout"]
    assert report["header"]["mode"].startswith("--tiny")
    assert report["workdir"] is None  # the temporary folder is removed
