"""The early stop inside the long cosine schedule: step counts, the formula, and the Trainer's actual learning rates."""

from __future__ import annotations

import math

import pytest

from spatialreasoner.errors import ConfigError
from spatialreasoner.train.schedule import full_schedule_steps, official_lr, warmup_steps

from .conftest import FAST_SFT, read_state


def test_full_schedule_steps_of_the_paper_recipes():
    # GRPO: 12 completions per device x 3 processes = 36 = 9 prompts x 4 generations per step -> rows / 9 per epoch.
    assert full_schedule_steps(900, 12, 3, 100, num_generations=4) == 10_000
    assert full_schedule_steps(901, 12, 3, 1, num_generations=4) == 101  # a partial last batch still counts
    # SFT: 6 per device x 4 processes = 24 rows per step.
    assert full_schedule_steps(24_000, 6, 4, 10) == 10_000
    assert full_schedule_steps(10, 4, 1, 30) == 90
    assert full_schedule_steps(10, 4, 1, 1, grad_accum=8) == 1  # at least one step per epoch
    with pytest.raises(ConfigError, match="per_device_batch"):
        full_schedule_steps(10, 0, 1, 1)


def test_official_lr_formula_matches_transformers_cosine_schedule():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    total, ratio, base = 1000, 0.1, 5e-6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps(total, ratio), total)
    for step in range(1, total + 1):
        assert opt.param_groups[0]["lr"] == pytest.approx(official_lr(step, base, total, ratio), rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    assert warmup_steps(total, ratio) == 100
    assert official_lr(101, base, total, ratio) == pytest.approx(base)
    assert official_lr(551, base, total, ratio) == pytest.approx(base * 0.5)


def test_trainer_stops_at_stop_steps_on_the_full_schedule(tiny_model_dir, train_tables, tmp_path):
    from spatialreasoner.train.main import train

    cfg = {**FAST_SFT, "num_train_epochs": 10, "stop_steps": 7, "learning_rate": 1e-3}
    out = train("sched", cfg, tiny_model_dir, train_tables["sft"], tmp_path / "work", tmp_path / "model", seed=0)
    state = read_state(out)
    assert state["global_step"] == 7
    total = full_schedule_steps(10, 4, 1, 10)  # 10 rows, batch 4 -> 3 steps per epoch -> 30
    assert total == 30 and state["max_steps"] == total
    lrs = {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}
    assert sorted(lrs) == list(range(1, 8))
    for step, lr in lrs.items():
        assert lr == pytest.approx(official_lr(step, 1e-3, total, 0.1), rel=1e-6)
    # Not a schedule squeezed into 7 steps: after warmup (3 steps) the rate has barely decayed.
    assert lrs[7] > 0.9e-3 and not math.isclose(lrs[7], official_lr(7, 1e-3, 7, 0.1))
    assert (tmp_path / "work" / "checkpoint-7").is_dir()
