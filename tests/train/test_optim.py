import math

import pytest

from gptlab import GPT, GPTConfig
from gptlab.config import TrainConfig
from gptlab.train.optim import lr_at, make_optimizer


def test_weight_decay_on_2d_tensors_only():
    model = GPT(GPTConfig.preset("tiny"))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()  # the tied matrix once, nothing missing


def test_schedule_warmup_cosine_floor():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110)
    assert lr_at(0, c) == pytest.approx(1e-4)
    assert lr_at(9, c) == pytest.approx(1e-3)
    assert lr_at(60, c) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: the mean
    assert lr_at(110, c) == pytest.approx(1e-4) and lr_at(10_000, c) == pytest.approx(1e-4)
    values = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert not math.isnan(lr_at(0, TrainConfig(warmup_iters=0)))
