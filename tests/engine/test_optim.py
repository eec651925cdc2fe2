import math

import pytest
import torch
from torch import nn

from tunedet.engine.optim import adam, adamw, build_optimizer, clip_gradients, param_groups, sgd

W0 = [1.0, -2.0]


def quadratic_steps(optimizer, w, steps):
    """Run ``steps`` steps on loss = 0.5·||w||² (gradient = w)."""
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (w**2).sum()).backward()
        optimizer.step()
    return w.detach().tolist()


def test_sgd_momentum_two_steps_match_hand_computation():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = sgd([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    # step 1: g = 1.01 w0, buf = g, w1 = 0.899 w0
    # step 2: g = 1.01 w1 = 0.90799 w0, buf = 0.9·1.01 w0 + g = 1.81699 w0, w2 = w1 - 0.1 buf
    assert quadratic_steps(opt, w, 2) == pytest.approx([0.717301, -1.434602], abs=1e-12)


def test_sgd_nesterov_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = sgd([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    # step 1: g = w0, buf = g, update = g + 0.9 buf = 1.9 w0 -> w1 = 0.81 w0
    assert quadratic_steps(opt, w, 1) == pytest.approx([0.81, -1.62], abs=1e-12)


def adam_reference(w0, steps, lr, b1, b2, eps, wd, decoupled):
    out = []
    for w in w0:
        m = v = 0.0
        for t in range(1, steps + 1):
            g = w
            if decoupled:
                w = w * (1 - lr * wd)
            else:
                g = g + wd * w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            w = w - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(w)
    return out


def test_adamw_first_step_is_decay_then_signed_lr():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adamw([w], lr=0.1, weight_decay=0.05)
    # w1 = w0 (1 - lr·wd) - lr · g / (|g| + eps), g = w0
    assert quadratic_steps(opt, w, 1) == pytest.approx([0.895, -1.89], abs=1e-7)


def test_adamw_three_steps_match_reference_formula():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adamw([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    expected = adam_reference(W0, 3, 0.1, 0.9, 0.999, 1e-8, 0.05, decoupled=True)
    assert quadratic_steps(opt, w, 3) == pytest.approx(expected, abs=1e-10)


def test_adam_l2_decay_three_steps_match_reference_formula():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adam([w], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    expected = adam_reference(W0, 3, 0.05, 0.8, 0.99, 1e-6, 0.1, decoupled=False)
    assert quadratic_steps(opt, w, 3) == pytest.approx(expected, abs=1e-10)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Conv2d(4, 4, 1)
        self.frozen.requires_grad_(False)


def group_by_name(groups):
    return {g["name"]: g for g in groups}


def test_param_groups_put_norm_weights_and_biases_in_norm_group():
    net = TinyNet()
    groups = group_by_name(param_groups(net, weight_decay=1e-4))
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    norms = [net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias, net.ln.weight, net.ln.bias]
    assert ids["norm"] == {id(p) for p in norms}
    assert ids["bias"] == {id(net.conv.bias), id(net.fc.bias)}
    assert ids["decay"] == {id(net.conv.weight), id(net.fc.weight)}
    assert groups["decay"]["weight_decay"] == 1e-4
    assert groups["norm"]["weight_decay"] == 0.0
    assert groups["bias"]["weight_decay"] == 0.0


def test_param_groups_skip_frozen_parameters_and_count_shared_ones_once():
    net = TinyNet()
    net.tied = net.fc  # the same parameters reachable twice
    groups = param_groups(net, weight_decay=1e-4, norm_decay=1e-5, bias_decay=1e-3)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    assert {id(p) for p in params} == {id(p) for p in net.parameters() if p.requires_grad}
    assert all(id(p) not in {id(q) for q in net.frozen.parameters()} for p in params)
    assert group_by_name(groups)["norm"]["weight_decay"] == 1e-5
    assert group_by_name(groups)["bias"]["weight_decay"] == 1e-3


def test_param_groups_drop_empty_groups():
    groups = param_groups(nn.Linear(3, 2, bias=False), weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay"]


def test_build_optimizer_from_spec_groups_model_parameters():
    net = TinyNet()
    spec = {"type": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "bias_decay": 1e-4}
    opt = build_optimizer(net, spec)
    assert isinstance(opt, torch.optim.SGD)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"decay": 5e-4, "norm": 0.0, "bias": 1e-4}
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    assert isinstance(build_optimizer(net, {"type": "adamw"}), torch.optim.AdamW)


def test_norm_parameters_are_not_decayed_by_an_optimizer_step():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = build_optimizer(net, {"type": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.5})
    before = net[1].weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(net[1].weight, before)
    assert not torch.equal(net[0].weight, net[0].weight.detach() * 0)  # decayed, not zeroed


def test_clip_gradients_returns_total_norm_and_clips():
    net = nn.Linear(2, 1, bias=False)
    net.weight.grad = torch.tensor([[3.0, 4.0]])
    assert clip_gradients(net, None) == pytest.approx(5.0)
    assert net.weight.grad.tolist() == [[3.0, 4.0]]
    assert clip_gradients(net, 1.0) == pytest.approx(5.0)
    assert net.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_clip_gradients_without_grads_is_zero():
    assert clip_gradients(nn.Linear(2, 1), 1.0) == 0.0
