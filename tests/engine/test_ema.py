"""EMA of weights: the update formula with its warm-up ramp, buffers copied, state round trip."""

import math

import pytest
import torch
from torch import nn

from tunedet.engine.ema import ModelEMA


def test_ema_equals_its_formula_over_several_updates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    ema = ModelEMA(model, decay=0.9, tau=3.0)
    expected = {k: v.detach().clone() for k, v in model.named_parameters()}
    for update in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3, dtype=torch.float64))  # moves the BN running stats
        ema.update(model)
        d = 0.9 * (1 - math.exp(-update / 3.0))
        assert ema.decay_at(update) == pytest.approx(d)
        for name, p in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=0, atol=1e-12)
    for (name, b), (_, mb) in zip(ema.module.named_buffers(), model.named_buffers(), strict=True):
        assert torch.equal(b, mb), name  # buffers are copied, not averaged


def test_ema_copy_is_frozen_in_eval_mode_and_separate_from_the_model():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.5, tau=1.0)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(ema.module.weight, model.weight)


def test_ema_state_dict_round_trip_restores_updates_and_weights():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.1)
        ema.update(model)
    restored = ModelEMA(nn.Linear(2, 2), decay=0.9, tau=2.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 3
    assert torch.equal(restored.module.weight, ema.module.weight)


@pytest.mark.parametrize("decay, tau", [(0.0, 1.0), (1.0, 1.0), (0.9, 0.0)])
def test_ema_rejects_out_of_range_settings(decay, tau):
    with pytest.raises(ValueError):
        ModelEMA(nn.Linear(1, 1), decay=decay, tau=tau)
