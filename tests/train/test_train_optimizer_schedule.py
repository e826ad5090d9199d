"""Optimizer and lr-schedule options of the trainer (``optimizer``, ``lr_schedule``), against the torch
formulas worked out by hand in float64, and end to end through a short training run."""
from __future__ import annotations

import json
import math

import pytest
import torch

import methods
from bench.train import PreferenceTrainConfig, train_preference
from bench.train.engine import build_optimizer, build_scheduler


def two_parameter_step(config: PreferenceTrainConfig, steps: int) -> list[tuple[float, float]]:
    """(p1, p2) after each of ``steps`` optimizer steps on loss = (p1 * 1 + p2 * 2 - 0.5)^2, with
    weight decay 0 on p1 and 0.5 on p2 (two parameter groups, as the trainer builds them)."""
    p1 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    p2 = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    optimizer = build_optimizer(config, [{"params": [p1], "weight_decay": 0.0},
                                         {"params": [p2], "weight_decay": 0.5}])
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        ((p1 * 1.0 + p2 * 2.0 - 0.5) ** 2).backward()
        optimizer.step()
        out.append((p1.item(), p2.item()))
    return out


def test_rmsprop_two_steps_match_the_formula_by_hand():
    # torch.optim.RMSprop(lr) defaults: alpha 0.99, eps 1e-8, no momentum, not centered:
    #   g <- g + wd * p;  v <- alpha * v + (1 - alpha) * g^2;  p <- p - lr * g / (sqrt(v) + eps)
    lr, alpha, eps = 0.01, 0.99, 1e-8
    p, v, wd = [0.3, -0.2], [0.0, 0.0], [0.0, 0.5]
    expected = []
    for _ in range(2):
        residual = p[0] * 1.0 + p[1] * 2.0 - 0.5
        grads = [2 * residual * 1.0 + wd[0] * p[0], 2 * residual * 2.0 + wd[1] * p[1]]
        v = [alpha * v[i] + (1 - alpha) * grads[i] ** 2 for i in range(2)]
        p = [p[i] - lr * grads[i] / (math.sqrt(v[i]) + eps) for i in range(2)]
        expected.append(tuple(p))
    # step 1 by hand: residual -0.6, g = (-1.2, -2.4 - 0.1) -> sqrt(v) = 0.1 |g|: each moves by lr / 0.1 = 0.1
    assert expected[0] == pytest.approx((0.4, -0.1), abs=1e-8)
    got = two_parameter_step(PreferenceTrainConfig(optimizer="rmsprop", lr=lr), 2)
    for step in range(2):
        assert got[step] == pytest.approx(expected[step], rel=1e-12, abs=1e-15)


def test_adamw_is_still_the_default_optimizer():
    config = PreferenceTrainConfig(lr=0.01)
    assert config.optimizer == "adamw"
    # AdamW, first step: p <- p (1 - lr wd) - lr * g / (|g| + eps) (bias-corrected moments): a move of lr
    (p1, p2), = two_parameter_step(config, 1)
    assert p1 == pytest.approx(0.3 + 0.01, abs=1e-9)
    assert p2 == pytest.approx(-0.2 * (1 - 0.01 * 0.5) + 0.01, abs=1e-9)


def lrs(config: PreferenceTrainConfig, steps: int) -> list[float]:
    """The lr of optimizer steps 0 .. steps-1 as the loop reads it (``get_last_lr`` before ``step``)."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = build_optimizer(config, [{"params": [parameter], "weight_decay": 0.0}])
    scheduler = build_scheduler(config, optimizer, steps)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_constant_is_the_dpo_reference_schedule():
    # min(1, (s + 1) / (W + 1)) with W = 3: 1/4, 2/4, 3/4, then the full lr
    config = PreferenceTrainConfig(lr=0.8, lr_schedule="warmup_constant", warmup_steps=3, steps=6)
    assert lrs(config, 6) == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8], abs=1e-15)
    # without warm-up: the full lr from the first step
    assert lrs(config.with_updates(warmup_steps=0), 3) == pytest.approx([0.8, 0.8, 0.8], abs=1e-15)


def test_constant_keeps_its_transformers_meaning():
    # constant_with_warmup: min(1, s / W) with W = 3: 0, 1/3, 2/3, then the full lr
    config = PreferenceTrainConfig(lr=0.9, lr_schedule="constant", warmup_steps=3, steps=5)
    assert lrs(config, 5) == pytest.approx([0.0, 0.3, 0.6, 0.9, 0.9], abs=1e-15)


def test_warmup_constant_scheduler_state_survives_a_checkpoint():
    config = PreferenceTrainConfig(lr=0.8, lr_schedule="warmup_constant", warmup_steps=3, steps=6)
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = build_optimizer(config, [{"params": [parameter], "weight_decay": 0.0}])
    scheduler = build_scheduler(config, optimizer, 6)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer2 = build_optimizer(config, [{"params": [parameter], "weight_decay": 0.0}])
    resumed = build_scheduler(config, optimizer2, 6)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr()[0] == pytest.approx(0.6)


def test_a_training_run_uses_rmsprop_and_logs_the_warmup_constant_lr(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    pairs = [{"prompt": "The movie was", "chosen": " wonderful", "rejected": " boring"},
             {"prompt": "The plot", "chosen": " kept me guessing", "rejected": " made no sense"}]
    config = PreferenceTrainConfig(model="tiny", steps=3, batch_size=2, lr=1e-3, optimizer="rmsprop",
                                   lr_schedule="warmup_constant", warmup_steps=2, max_grad_norm=10.0,
                                   max_length=64, max_prompt_length=32, tensorboard=False, progress_bar=False,
                                   checkpoint_every=0)
    result = train_preference(config, pairs, methods.get("dpo"), tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in lines] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3], rel=1e-12)
    assert result.extra["config"]["optimizer"] == "rmsprop"
    assert result.extra["config"]["max_grad_norm"] == 10.0
