"""GRPO: the official prompt, and a few steps from the briefly SFT-trained tiny model with every reward."""

from __future__ import annotations

import pytest

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.train.grpo import grpo_prompt, prompt_texts

from .conftest import read_state

ROW = {"question": "Which is higher?", "A": "the cube", "B": "the ball", "C": "", "D": None}


def test_prompt_is_system_then_question_text():
    prompt = grpo_prompt(ROW, "SYSTEM")
    assert prompt[0] == {"role": "system", "content": "SYSTEM"}
    assert prompt[1]["role"] == "user"
    assert prompt[1]["content"] == (
        "Question: Which is higher?\nOptions:\nA. the cube\nB. the ball\n"
        "Please select the correct answer from the options above."
    )
    assert grpo_prompt(ROW, None)[0]["role"] == "user"


def test_instruction_override_and_prompt_keys():
    prompts = {"system": "S", "reasoning_3d": "Please estimate the 3D locations and reason the answer."}
    system, instruction = prompt_texts({"system_prompt": "system", "instruction": "reasoning_3d"}, prompts)
    assert system == "S"
    text = grpo_prompt(ROW, system, instruction)[1]["content"]
    assert text.endswith("B. the ball\nPlease estimate the 3D locations and reason the answer.")
    with pytest.raises(ConfigError, match="prompts.missing"):
        prompt_texts({"system_prompt": "missing", "instruction": None}, prompts)


PROMPTS = {"system": "Think."}  # short: a misplaced image span of a shorter prompt then fails loudly
GRPO_CFG = {
    "stage": "grpo",
    "num_train_epochs": 100,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 48,
    "temperature": 1.0,
    "rewards": ["accuracy", "format", "reasoning_steps", "process"],
    "save_steps": 1000,
    "gradient_checkpointing": False,
    "report_to": [],
}


def test_bad_batch_shapes_are_config_errors(sft_trained_dir, train_tables, tmp_path):
    from spatialreasoner.train.main import train

    with pytest.raises(ConfigError, match="not a multiple of num_generations=3"):
        train(
            "g",
            {**GRPO_CFG, "num_generations": 3, "stop_steps": 1},
            sft_trained_dir,
            train_tables["rl"],
            tmp_path / "w",
            tmp_path / "m",
            prompts=PROMPTS,
        )
    with pytest.raises(DataError, match="cannot fill one step"):
        train(
            "g",
            {**GRPO_CFG, "per_device_train_batch_size": 40, "stop_steps": 1},
            sft_trained_dir,
            train_tables["rl"],
            tmp_path / "w",
            tmp_path / "m",
            prompts=PROMPTS,
        )
    assert not (tmp_path / "m").exists()


def test_grpo_from_sft_model_updates_and_logs_every_reward(sft_trained_dir, train_tables, tmp_path, caplog):
    from spatialreasoner.train.main import train

    cfg = {**GRPO_CFG, "stop_steps": 3}
    caplog.set_level("INFO", logger="spatialreasoner.train.callbacks")
    out = train(
        "grpo", cfg, sft_trained_dir, train_tables["rl"], tmp_path / "work", tmp_path / "model", prompts=PROMPTS, seed=0
    )
    state = read_state(out)
    assert state["global_step"] == 3
    logs = [h for h in state["log_history"] if "reward" in h]
    assert len(logs) == 3
    for name in ("accuracy_reward", "format_reward", "reasoning_steps_reward", "process_reward"):
        assert all(f"rewards/{name}/mean" in h for h in logs), name
    assert max(h["grad_norm"] for h in logs) > 0
    # The vision tower trains too, so embeddings vLLM cached before a weight sync are stale after it.
    import torch
    from safetensors.torch import load_file

    before, after = load_file(sft_trained_dir / "model.safetensors"), load_file(out / "model.safetensors")
    visual = [k for k in after if "visual" in k]
    assert visual and any(not torch.equal(before[k], after[k]) for k in visual)
    assert any(h["reward_std"] > 0 for h in logs)  # non-zero advantages: the SFT start matters
    # The step metrics reach the run's log (the rule's log file), not only TensorBoard.
    step_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(step_lines) >= 3 and all("rewards/format_reward/mean=" in line for line in step_lines[:3])


def test_processor_pads_prompts_on_the_left_like_the_trainer(sft_trained_dir, train_tables, tmp_path):
    """GRPOTrainer left-pads prompt ids but takes image token types from the processor: both must agree, or the
    image span of a shorter prompt lands on the wrong tokens (Qwen2.5-VL's 3D positions)."""
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train import grpo
    from spatialreasoner.train.common import resolve_run_config, training_kwargs
    from spatialreasoner.train.sft import IMAGE_TOKENS

    cfg = resolve_run_config({**GRPO_CFG, "stop_steps": 1})
    processor = load_processor(sft_trained_dir)
    kwargs = training_kwargs(cfg, tmp_path / "w", 10, 0, "g")
    trainer = grpo.build_trainer(cfg, kwargs, sft_trained_dir, train_tables["rl"], processor, [], PROMPTS, 1)
    proc = trainer.processing_class
    rows = [trainer.train_dataset[0], trainer.train_dataset[2]]  # questions of different lengths
    texts = [proc.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    texts = [
        t.replace("<|im_start|>user\n", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>") for t in texts
    ]
    out = proc(images=[[r["image"]] for r in rows], text=texts, padding=True, return_tensors="pt")
    image_pad = proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[2])
    assert out["attention_mask"][:, 0].tolist().count(0) == 1  # the shorter prompt is padded at the start
    assert ((out["input_ids"] == image_pad) == (out["mm_token_type_ids"] == 1)).all()
