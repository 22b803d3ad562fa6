"""The GRPO objective's official settings: loss aggregation over the local batch's tokens (`bnpo`), training
log-probabilities from the raw logits (`logprob_temperature: 1.0`), and no vLLM importance-sampling correction."""

from __future__ import annotations

import pytest
import torch

from spatialreasoner.errors import ConfigError
from spatialreasoner.train import grpo
from spatialreasoner.train.common import resolve_run_config, training_kwargs

CFG = {
    "stage": "grpo",
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 8,
    "rewards": ["format"],
    "gradient_checkpointing": False,
    "report_to": [],
}


def build(tiny_model_dir, train_tables, tmp_path, **overrides):
    from spatialreasoner.modeling import load_processor

    cfg = resolve_run_config({**CFG, **overrides})
    kwargs = training_kwargs(cfg, tmp_path / "w", 10, 0, "g")
    return grpo.build_trainer(
        cfg, kwargs, tiny_model_dir, train_tables["rl"], load_processor(tiny_model_dir), [], {"system": "S"}, 1
    )


def batch(trainer, lengths=(1, 3), advantages=(1.0, -1.0)):
    """Two text-only completions of different lengths (right-padded) after a short prompt."""
    vocab = trainer.model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    width = max(lengths)
    completion_mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return {
        "prompt_ids": torch.randint(10, vocab - 10, (len(lengths), 5), generator=gen),
        "prompt_mask": torch.ones(len(lengths), 5, dtype=torch.long),
        "completion_ids": torch.randint(10, vocab - 10, (len(lengths), width), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages),
        "num_items_in_batch": completion_mask.sum(),
    }


def test_bnpo_divides_the_token_sum_by_the_local_token_count(tiny_model_dir, train_tables, tmp_path):
    # With one optimisation pass per generation the ratio is 1, so each token's loss is -advantage: the aggregation
    # alone decides the value. Advantages +1 (1 token) and -1 (3 tokens):
    #   bnpo (official): (-1 * 1 + 1 * 3) / 4 tokens = 0.5;  grpo (mean of per-sequence means): (-1 + 1) / 2 = 0.
    trainer = build(tiny_model_dir, train_tables, tmp_path / "a")
    assert trainer.loss_type == "bnpo"  # the default, as the official trainer
    trainer.current_gradient_accumulation_steps = 1
    inputs = batch(trainer)
    assert trainer.compute_loss(trainer.model, inputs).item() == pytest.approx(0.5, abs=1e-6)
    trainer.loss_type = "grpo"
    assert trainer.compute_loss(trainer.model, inputs).item() == pytest.approx(0.0, abs=1e-6)


def completion_logps(trainer, inputs, temperature):
    """Log-probabilities of the completion tokens from the model's plain logits divided by ``temperature``."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    logps = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return logps[:, -inputs["completion_ids"].size(1) :]


def trainer_logps(trainer, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, torch.ones_like(ids), inputs["completion_ids"].size(1)
        )
    return logps


def test_logprob_temperature_one_scores_the_raw_logits(tiny_model_dir, train_tables, tmp_path):
    # A sampling temperature far from 1 makes the two conventions differ clearly.
    trl_default = build(tiny_model_dir, train_tables, tmp_path / "a", temperature=0.5)
    inputs = batch(trl_default, lengths=(3, 3))
    assert torch.allclose(trainer_logps(trl_default, inputs), completion_logps(trl_default, inputs, 0.5), atol=1e-5)
    assert not torch.allclose(completion_logps(trl_default, inputs, 0.5), completion_logps(trl_default, inputs, 1.0))

    official = build(tiny_model_dir, train_tables, tmp_path / "b", temperature=0.5, logprob_temperature=1.0)
    assert torch.allclose(trainer_logps(official, inputs), completion_logps(official, inputs, 1.0), atol=1e-5)
    # Sampling keeps the configured temperature.
    assert official.temperature == 0.5 and official.generation_config.temperature == 0.5


def test_vllm_importance_sampling_correction_is_a_run_key(tiny_model_dir, train_tables, tmp_path):
    assert resolve_run_config(CFG)["vllm"]["importance_sampling_correction"] is True  # TRL 1.16's default
    off = build(tiny_model_dir, train_tables, tmp_path, vllm={"importance_sampling_correction": False})
    assert off.args.vllm_importance_sampling_correction is False
    assert off.vllm_importance_sampling_correction is False


def test_raw_logit_logprobs_with_vllm_correction_are_refused(tiny_model_dir, train_tables, tmp_path):
    with pytest.raises(ConfigError, match="importance_sampling_correction: false"):
        build(tiny_model_dir, train_tables, tmp_path, logprob_temperature=1.0, vllm={"mode": "colocate"})
