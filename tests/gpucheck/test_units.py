"""gpu-check's parts that need no stage run: kept architectures, FLOPs, peaks, model choice, budget, table."""

from __future__ import annotations

import math
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spatialreasoner.errors import ConfigError
from spatialreasoner.gpucheck import architectures, main, table
from spatialreasoner.gpucheck.device import bf16_peak_tflops
from spatialreasoner.gpucheck.grpo import split_times
from spatialreasoner.gpucheck.inference import agreement, until_stop

# Parameter counts of the published checkpoints (their safetensors metadata).
PUBLISHED_PARAMETERS = {"7b": 8_292_166_656, "3b": 3_754_622_976}


@pytest.fixture(scope="module")
def tokenizer():
    from spatialreasoner.tiny_model import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("name", ["7b", "3b"])
def test_kept_architectures_build_the_published_parameter_counts(name, tokenizer):
    import torch
    from transformers import AutoModelForImageTextToText

    from spatialreasoner.gpucheck.models import published_config

    tok = tokenizer
    config = published_config(name, tok)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == PUBLISHED_PARAMETERS[name]
    assert architectures.parameter_counts(config)["total"] == counted
    # The config's token ids are the local tokenizer's, and the vocabulary keeps its published size.
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.text_config.vocab_size == architectures.ARCHITECTURES[name]["vocab_size"]
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]


def test_training_flops_by_hand():
    arch = architectures.architecture("7b")
    p = architectures.parameter_counts(arch)
    # Dense text FLOPs per token: 6 x (decoder layers + final norm + output layer), embedding lookup excluded.
    dense = 6 * (p["text_layers"] + p["lm_head"])
    assert dense == 6 * (p["total"] - p["embed"] - p["vision_blocks"] - p["vision_merger"])
    t = 2048
    attention = 12 * 28 * 3584 * t * t
    assert architectures.training_flops(arch, t, 0) == dense * t + attention
    # About 6 x 7.6e9 FLOPs per token for the language model (decoder and output layer) at 2k context.
    assert 4.4e10 < architectures.training_flops(arch, t, 0) / t < 4.6e10
    # An image adds its vision tower's FLOPs: 1024 patches (448 x 448 px), windows of 64 patches, 4 full blocks.
    with_image = architectures.training_flops(arch, t, 1024) - architectures.training_flops(arch, t, 0)
    vision = 6 * p["vision_blocks"] * 1024 + 6 * p["vision_merger"] * 256 + 12 * 1280 * 1024 * (28 * 64 + 4 * 1024)
    assert with_image == vision


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("Tesla V100-SXM2-32GB", None),
        (None, None),
    ],
)
def test_bf16_peaks_by_device_name(name, peak):
    assert bf16_peak_tflops(name) == peak


def _recipes():
    return main.load_recipes(Path("config/config.yaml"), "SpatialReasoner-SFT", "SpatialReasoner-Zero")


def test_recipes_come_from_the_paper_config(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    r = _recipes()
    assert (r["sft"]["per_device_train_batch_size"], r["sft"]["max_length"]) == (6, 2048)
    g = r["grpo"]
    assert (g["per_device_train_batch_size"], g["num_generations"], g["max_completion_length"]) == (12, 4, 512)
    assert (r["min_pixels"], r["max_pixels"], r["max_new_tokens"]) == (59716, 200704, 512)
    with pytest.raises(ConfigError, match="runs.NoSuchRun does not exist"):
        main.load_recipes(Path("config/config.yaml"), "NoSuchRun", "SpatialReasoner-Zero")
    with pytest.raises(ConfigError, match="is a grpo run, not sft"):
        main.load_recipes(Path("config/config.yaml"), "SpatialReasoner-Zero", "SpatialReasoner-Zero")


def test_model_choice_follows_the_memory_estimates(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    sft = _recipes()["sft"]
    est = {m: main.estimate_gib("sft", m, sft, 100.0) for m in ("7b", "3b")}
    assert est["7b"] > est["3b"] > 0
    fits = lambda gib: gib / main.MEMORY_HEADROOM  # noqa: E731  (GPU size at which an estimate just fits)
    assert main.choose_model("sft", sft, fits(est["7b"]) + 1, None)[0] == "7b"
    assert main.choose_model("sft", sft, fits(est["7b"]) - 1, None)[0] == "3b"
    # Too small for the 3B at the recipe's batch: the 3B at a smaller batch, named in the note.
    small = {**sft, "per_device_train_batch_size": 3}
    gpu = fits(main.estimate_gib("sft", "3b", small, 0)) + 0.5
    assert gpu < fits(est["3b"])
    model, recipe, note = main.choose_model("sft", sft, gpu, None)
    assert (model, recipe["per_device_train_batch_size"]) == ("3b", 3)
    assert "at batch 3 (recipe 6)" in note
    model, _, note = main.choose_model("sft", sft, 8.0, None)
    assert model is None and "no model fits" in note
    assert main.choose_model("sft", sft, 8.0, "7b")[0] == "7b"  # forced
    # GRPO batches stay multiples of the generations per prompt.
    grpo = _recipes()["grpo"]
    g_small = {**grpo, "per_device_train_batch_size": 4}
    gpu = fits(main.estimate_gib("grpo", "3b", g_small, 0)) + 0.5
    if gpu < fits(main.estimate_gib("grpo", "3b", grpo, 0)):
        assert main.choose_model("grpo", grpo, gpu, None)[1]["per_device_train_batch_size"] % 4 == 0


def test_budget_splits_the_time_left_by_weight():
    budget = main.Budget(100.0, minimum=20.0)
    assert budget.cap(1.0, 4.0) == pytest.approx(25.0, abs=0.5)
    assert budget.cap(2.0, 2.0) == pytest.approx(100.0, abs=0.5)
    assert main.Budget(30.0, minimum=20.0).cap(1.0, 4.0) is None  # 7.5 s is not worth starting


def test_agreement_counts_tokens():
    hf = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9], []]
    other = [[1, 2, 3, 4], [5, 6, 0, 0], [8, 9], [1]]
    a = agreement(hf, other)
    assert a["compared_rows"] == 4 and a["identical_rows"] == 1
    assert a["first_token_agreement"] == 0.5
    assert a["mean_common_prefix_fraction"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    with pytest.raises(ValueError):
        agreement(hf, other[:2])
    assert until_stop([4, 5, 2, 7], {2}) == [4, 5] and until_stop([4], {2}) == [4]


def test_grpo_time_split():
    steps = [10.0, 6.0, 8.0]
    phase = [7.0, 4.0, 5.0]  # generation + scoring
    generate = [6.0, 3.5, 4.0]
    s = split_times(steps, phase, generate, warmup=1)
    assert s["measured_steps"] == 2
    assert s["seconds_per_step"] == pytest.approx(7.0)
    assert s["generation_seconds"] == pytest.approx(3.75)
    assert s["scoring_seconds"] == pytest.approx(0.75)
    assert s["update_seconds"] == pytest.approx(2.5)
    assert s["generation_seconds"] + s["scoring_seconds"] + s["update_seconds"] == pytest.approx(7.0)


def test_skip_reasons():
    probe = {"installed": {"deepspeed": False, "flash-attn": True, "vllm": True}, "cuda": False}
    by_key = {s.key: s for s in main.STAGES}
    assert main.skip_reason(by_key["sft-zero3"], probe, Path("z.yaml")) == "deepspeed is not installed"
    assert main.skip_reason(by_key["sft-flash-attn"], probe, None) == "flash-attn needs a CUDA GPU"
    assert main.skip_reason(by_key["grpo-vllm"], probe, None) is None
    probe["installed"]["deepspeed"] = True
    assert "zero3.yaml was not found" in main.skip_reason(by_key["sft-zero3"], probe, None)
    with pytest.raises(ConfigError, match="unknown stage"):
        main.parse_stages("sft,nope")


def _stage_module(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_a_failing_stage_becomes_an_error_row_and_a_hung_one_is_killed(tmp_path):
    env = {**main.stage_environment(tiny=True), "PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"}
    boom = _stage_module(tmp_path, "gc_boom", """
        from spatialreasoner.gpucheck.common import finish
        def run(spec):
            raise ValueError(f"bad value {spec['x']}")
        finish(run)
    """)  # fmt: skip
    result = main.run_stage("boom", boom, {"x": 7}, tmp_path / "work", cap=60, env=env)
    assert result["status"] == "error" and result["error"] == "ValueError: bad value 7"
    crash = _stage_module(tmp_path, "gc_crash", "import os\nos._exit(3)\n")
    result = main.run_stage("crash", crash, {}, tmp_path / "work", cap=60, env=env)
    assert result["status"] == "error" and "exited with code 3 without a result" in result["error"]
    hang = _stage_module(tmp_path, "gc_hang", "import time\ntime.sleep(600)\n")
    monkey_grace = main.KILL_GRACE_SECONDS
    main.KILL_GRACE_SECONDS = 1
    try:
        t0 = time.time()
        result = main.run_stage("hang", hang, {}, tmp_path / "work", cap=2, env=env)
    finally:
        main.KILL_GRACE_SECONDS = monkey_grace
    assert result["status"] == "error" and result["error"].startswith("timed out: killed after 3 s")
    assert time.time() - t0 < 30


def test_table_rows_keep_reasons_and_escape_markdown():
    rows = [
        table.row("SFT", "accelerate + DeepSpeed ZeRO-3", None, reason="deepspeed is not installed"),
        table.row("GRPO", "vLLM", "tiny", {"status": "error", "error": "RuntimeError: a | b", "seconds": 3.0}),
    ]
    assert rows[0]["status"] == "skipped" and rows[0]["details"] == "deepspeed is not installed"
    assert rows[1]["status"] == "error" and rows[1]["reason"] == "RuntimeError: a | b"
    md = table.render_markdown(rows, {"device": "CPU"})
    assert "RuntimeError: a \\| b" in md and "| skipped |" in md
    text = table.render_text(rows)
    assert "deepspeed is not installed" in text and text.splitlines()[0].startswith("stage")
    assert math.isclose(rows[1]["figures"]["seconds"], 3.0)
