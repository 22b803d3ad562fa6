"""GRPO with generation by colocated vLLM engines under DeepSpeed ZeRO-3 on two CPU processes (``DS_ACCELERATOR=cpu``,
gloo), through the job's own ``accelerate launch`` command with ``workflow/accelerate/zero3.yaml``: each rank samples
from its own engine, which TRL fills at every step with the parameters it gathers from the ZeRO-3 shards
(``deepspeed.zero.GatheredParameters``); the engines score the trainer's own prompts (images given as one placeholder
each, expanded by vLLM to the trainer's token ids) with the trainer's current weights, and after a last sync every
rank's engine computes with the trained weights."""

from __future__ import annotations

import json
import math
import os
import shlex

import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.train.launch import train_command
from spatialreasoner.train.vllm_colocate import collapse_image_runs, feed_unexpanded_image_prompts

from .conftest import read_state
from .test_multiproc import run_job
from .test_zero3 import ZERO3_FILE, zero_config_of

STEPS = 3
#: The colocate test's tolerance for vLLM's log-probabilities against the trainer's (float32 kernels differ a little).
TOLERANCE = 1e-4

#: The job's own entry point in each rank, with the engine's syncs and generations counted; after training (every
#: rank together) one more sync, and this rank's engine's next-token log-probabilities against the exported final
#: model and the starting model, loaded whole once DeepSpeed's hold on `from_pretrained` is released. One JSON report
#: per rank.
DRIVER = """
import json, os, sys
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the repository root: the colocate test's log-probability helper
from spatialreasoner.cli import main
from spatialreasoner.train import grpo

report, argv = Path(sys.argv[1]), sys.argv[2:]
counts, built, real_build = {"sync": 0, "generate": 0}, [], grpo.build_trainer


def build_and_count(*args, **kwargs):
    trainer = real_build(*args, **kwargs)
    generation = trainer.vllm_generation
    sync, generate = generation.sync_weights, generation.generate

    def counted_sync():
        counts["sync"] += 1
        sync()

    def counted_generate(*a, **k):
        counts["generate"] += 1
        return generate(*a, **k)

    generation.sync_weights, generation.generate = counted_sync, counted_generate
    built.append(trainer)
    return trainer


grpo.build_trainer = build_and_count
rc = main(argv)
result = {"rc": rc, **counts}
if rc == 0:
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from spatialreasoner.modeling import load_model, load_processor
    from tests.train.test_vllm_colocate import LIMITS, max_gap, next_token_logprobs

    (trainer,) = built
    generation = trainer.vllm_generation
    params = list(trainer.model.parameters())
    result.update(
        mode=generation.mode, engine=f"{type(generation.llm).__module__}.{type(generation.llm).__name__}",
        zero_stage=trainer.accelerator.state.deepspeed_plugin.zero_stage,
        # parameters of which this rank holds a shard only: the sync had to gather them
        sharded=sum(p.ds_tensor.numel() < p.ds_numel for p in params if hasattr(p, "ds_tensor")), params=len(params),
    )
    generation.sync_weights()  # the trained weights, gathered from both ranks' shards
    unset_hf_deepspeed_config()
    init, out, table = (Path(argv[argv.index(flag) + 1]) for flag in ("--init", "--out", "--data"))
    final, start = (load_model(d, dtype="float32", attn_implementation="sdpa").eval() for d in (out, init))
    processor = load_processor(init, **LIMITS)
    from_vllm, (trained, started) = next_token_logprobs(generation.llm, processor, table, [final, start])
    result.update(to_trained=max_gap(from_vllm, trained), to_start=max_gap(from_vllm, started))
report.with_name(f"{report.name}.{os.environ['RANK']}.json").write_text(json.dumps(result))
sys.exit(rc)
"""


class FakeGeneration:
    """TRL's VLLMGeneration as the wrapper sees it: vLLM expands each image placeholder to ``expand`` tokens."""

    mode = "colocate"

    def __init__(self, image: int, expand: int):
        self.image, self.expand, self.sent = image, expand, []

    def generate(self, prompts, images, num_generations, profiler=None):
        self.sent.append(prompts)
        made = [[t for token in ids for t in ([token] * self.expand if token == self.image else [token])]
                for ids in prompts]  # fmt: skip
        return made, [[7]] * len(prompts), None, None


class FakeTrainer:
    def __init__(self, generation, image: int):
        self.vllm_generation = generation
        self.processing_class = type("Processor", (), {"image_token_id": image})()


def test_engine_gets_one_placeholder_per_image_and_must_expand_it_to_the_trainers_prompt():
    image = 9
    assert collapse_image_runs([1, 8, 9, 9, 9, 5, 2, 8, 9, 9, 5], image) == [1, 8, 9, 5, 2, 8, 9, 5]
    prompts = [[1, 8, 9, 9, 9, 5, 2], [1, 8, 9, 9, 9, 5, 3, 3]]
    generation = FakeGeneration(image, expand=3)
    feed_unexpanded_image_prompts(FakeTrainer(generation, image))
    prompt_ids, completion_ids, _, _ = generation.generate(prompts=prompts, images=[["a"], ["b"]], num_generations=1)
    assert generation.sent == [[[1, 8, 9, 5, 2], [1, 8, 9, 5, 3, 3]]] and prompt_ids == prompts
    assert completion_ids == [[7], [7]]
    # A text-only batch goes in as it is.
    generation.generate(prompts=[[1, 2]], images=None, num_generations=1)
    assert generation.sent[-1] == [[1, 2]]
    # An engine that makes another number of image tokens of an image than the trainer's processor: stop.
    generation = FakeGeneration(image, expand=4)
    feed_unexpanded_image_prompts(FakeTrainer(generation, image))
    with pytest.raises(DataError, match="became 8 tokens with 4 image tokens in the engine, but the trainer's processor"
                                        " made 7 tokens with 3"):  # fmt: skip
        generation.generate(prompts=prompts[:1], images=[["a"]], num_generations=1)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_zero3_grpo_generates_with_colocated_vllm_fed_the_gathered_weights(
    sft_trained_dir, train_tables, tmp_path, repo_root, monkeypatch
):
    from .test_grpo import GRPO_CFG, PROMPTS
    from .test_vllm_colocate import LIMITS

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    cfg = {**GRPO_CFG, "per_device_train_batch_size": 4, "num_processes": 2, "stop_steps": STEPS,
           "save_steps": STEPS, "learning_rate": 1e-2, "gradient_checkpointing": True, "resources": {"gpus": 0},
           "accelerate_config": ZERO3_FILE, "vllm": {"mode": "colocate"}}  # fmt: skip
    log = tmp_path / "train.log"
    cmd = train_command(
        "gv", cfg, init=str(sft_trained_dir), data=str(train_tables["rl"]), checkpoint_dir=str(tmp_path / "work"),
        out=str(tmp_path / "model"), log=str(log), prompts=PROMPTS, seed=0, **LIMITS,
    )  # fmt: skip
    assert "DS_ACCELERATOR=cpu" in cmd and f"--config_file {ZERO3_FILE} --num_processes 2 --mixed_precision no" in cmd
    assert cmd.count(" -m spatialreasoner.cli ") == 1
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    report = tmp_path / "report"
    run_job(cmd.replace(" -m spatialreasoner.cli ", f" {shlex.quote(str(driver))} {shlex.quote(str(report))} "),
            repo_root, log)  # fmt: skip
    ranks = [json.loads((tmp_path / f"report.{rank}.json").read_text()) for rank in (0, 1)]
    print("\nper rank:", ranks)
    for rank in ranks:
        assert rank["rc"] == 0 and rank["zero_stage"] == 3 and rank["sharded"] > 0, rank
        # Every step synced this rank's own engine and generated with it.
        assert rank["mode"] == "colocate" and rank["engine"] == "vllm.entrypoints.llm.LLM"
        assert rank["sync"] == STEPS and rank["generate"] == STEPS, rank
        # After one more sync the engine computes with the trained weights, not the starting ones.
        assert rank["to_trained"] < TOLERANCE and rank["to_start"] > 10 * TOLERANCE, rank

    steps = [h for h in read_state(tmp_path / "model")["log_history"] if "loss" in h]
    print("ZeRO-3 GRPO with vLLM:", [{k: h[k] for k in ("step", "loss", "reward", "grad_norm",
          "sampling/sampling_logp_difference/max")} for h in steps])  # fmt: skip
    assert [h["step"] for h in steps] == list(range(1, STEPS + 1))
    for h in steps:
        assert all(math.isfinite(h[k]) for k in ("loss", "reward", "grad_norm")), h
        assert h["completions/mean_length"] > 0 and h["reward"] > 0, h
        # vLLM's log-probabilities of its samples (max over both ranks) are the trainer's on the same tokens: the
        # engines scored the trainer's prompts with the weights being trained (step 3: those after step 2's update).
        assert h["sampling/sampling_logp_difference/max"] < TOLERANCE, h
    assert zero_config_of(tmp_path / "work" / f"checkpoint-{STEPS}")["zero_optimization"]["stage"] == 3
    assert log.read_text().count("final model written to") == 1
