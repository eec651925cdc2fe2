import math

import pytest
import torch
from torch import nn

from tunedet.engine.adabound import AdaBound, adabound
from tunedet.engine.lr_policies import ConstantLR
from tunedet.engine.lr_schedule import LRSchedule
from tunedet.engine.optim import (
    adadelta,
    adagrad,
    adam,
    adamw,
    apply_l1_penalty,
    build_optimizer,
    clip_gradients,
    linear_scaled_lr,
    param_groups,
    rmsprop,
    sgd,
)

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


def test_adagrad_two_steps_match_hand_computation():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adagrad([w], lr=0.1, eps=1e-10, weight_decay=0.0)
    # step 1: G = w0², w1 = w0 − 0.1·w0/|w0| ; step 2: G = w0² + w1², w2 = w1 − 0.1·w1/sqrt(G)
    expected = []
    for x in W0:
        x1 = x - 0.1 * x / (abs(x) + 1e-10)
        expected.append(x1 - 0.1 * x1 / (math.sqrt(x * x + x1 * x1) + 1e-10))
    assert quadratic_steps(opt, w, 2) == pytest.approx(expected, abs=1e-12)


def test_rmsprop_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = rmsprop([w], lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1)
    # g = 1.1·w0; v = 0.1·g²; w1 = w0 − 0.01·g/(sqrt(v) + eps)
    expected = []
    for x in W0:
        g = 1.1 * x
        expected.append(x - 0.01 * g / (math.sqrt(0.1 * g * g) + 1e-8))
    assert quadratic_steps(opt, w, 1) == pytest.approx(expected, abs=1e-12)


def test_adadelta_three_steps_match_the_papers_update():
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adadelta([w], lr=0.5, rho=0.9, eps=1e-6, weight_decay=0.1)
    # Zeiler 2012, Algorithm 1 (scaled by lr): E[g²] ← ρE[g²] + (1−ρ)g²,
    # Δ = −sqrt(E[Δ²] + ε)/sqrt(E[g²] + ε)·g, E[Δ²] ← ρE[Δ²] + (1−ρ)Δ², w ← w + lr·Δ
    expected = []
    for x in W0:
        eg = ed = 0.0
        for _ in range(3):
            g = 1.1 * x
            eg = 0.9 * eg + 0.1 * g * g
            delta = -math.sqrt(ed + 1e-6) / math.sqrt(eg + 1e-6) * g
            ed = 0.9 * ed + 0.1 * delta * delta
            x = x + 0.5 * delta
        expected.append(x)
    assert quadratic_steps(opt, w, 3) == pytest.approx(expected, abs=1e-12)


def adabound_reference(w0, steps, lr, b1, b2, final_lr, gamma, eps, amsbound=False):
    out = []
    for w in w0:
        m = v = v_max = 0.0
        for t in range(1, steps + 1):
            g = w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            v_max = max(v_max, v)
            second = v_max if amsbound else v
            rate = lr * math.sqrt(1 - b2**t) / (1 - b1**t) / (math.sqrt(second) + eps)
            lower = final_lr * (1 - 1 / (gamma * t + 1))
            upper = final_lr * (1 + 1 / (gamma * t))
            w = w - min(max(rate, lower), upper) * m
        out.append(w)
    return out


def test_adabound_bounds_at_a_given_step():
    lower, upper = AdaBound.bounds(final_lr=0.1, gamma=1e-3, step=1000)
    assert lower == pytest.approx(0.1 * (1 - 1 / 2))
    assert upper == pytest.approx(0.1 * (1 + 1))


def test_adabound_first_step_is_clipped_into_the_bounds():
    # step 1 (gamma = 1): bounds [0.1·(1 − 1/2), 0.1·(1 + 1)] = [0.05, 0.2]; m = 0.1·g and
    # Adam's bias-corrected rate lr·sqrt(1 − β2)/(1 − β1)/sqrt(v) = lr/(0.1·|g|)
    w = nn.Parameter(torch.tensor([0.5, -0.01], dtype=torch.float64))
    opt = adabound([w], lr=0.001, final_lr=0.1, gamma=1.0)
    quadratic_steps(opt, w, 1)
    # |g| = 0.5: rate 0.02 → lower 0.05; |g| = 0.01: rate 1.0 → upper 0.2
    assert w.tolist() == pytest.approx([0.5 - 0.05 * 0.05, -0.01 + 0.2 * 0.001], abs=1e-12)


@pytest.mark.parametrize("amsbound", [False, True])
def test_adabound_steps_match_reference_formula(amsbound):
    w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = adabound([w], lr=0.01, betas=(0.9, 0.999), final_lr=0.05, gamma=0.1, amsbound=amsbound)
    expected = adabound_reference(W0, 5, 0.01, 0.9, 0.999, 0.05, 0.1, 1e-8, amsbound)
    assert quadratic_steps(opt, w, 5) == pytest.approx(expected, abs=1e-12)


def test_adabound_final_lr_follows_the_schedule_ratio():
    # halving the group's lr halves the bounds (final_lr · lr / base_lr)
    w = nn.Parameter(torch.tensor([1e-6], dtype=torch.float64))
    opt = adabound([w], lr=0.01, final_lr=0.1, gamma=1.0)
    opt.param_groups[0]["lr"] = 0.005
    quadratic_steps(opt, w, 1)
    # tiny gradient: Adam's rate 0.005/(1e-6 + 1e-8) is far above upper = 0.05·2 = 0.1
    assert w.item() == pytest.approx(1e-6 - 0.1 * 0.1 * 1e-6, rel=1e-9)


def test_param_multipliers_scale_lr_and_decay_by_longest_module_prefix():
    net = nn.Sequential()
    net.add_module("backbone", nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    net.add_module("head", nn.Linear(2, 1))
    multipliers = {"backbone": {"lr": 0.1}, "backbone.1": {"lr": 0.5, "decay": 0.0}}
    opt = build_optimizer(
        net, {"type": "sgd", "lr": 0.02, "weight_decay": 1e-4, "param_multipliers": multipliers}
    )
    groups = group_by_name(opt.param_groups)
    assert set(groups) == {"decay", "bias", "backbone/decay", "backbone/bias"} | {
        "backbone.1/decay",
        "backbone.1/bias",
    }
    assert groups["backbone/decay"]["params"] == [net.backbone[0].weight]
    assert groups["backbone/decay"]["lr"] == pytest.approx(0.002)
    assert groups["backbone/decay"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["backbone.1/decay"]["lr"] == pytest.approx(0.01)
    assert groups["backbone.1/decay"]["weight_decay"] == 0.0
    assert groups["decay"]["params"] == [net.head.weight]
    # the schedule keeps the multipliers
    LRSchedule(0.1, ConstantLR()).apply(opt, 0)
    assert group_by_name(opt.param_groups)["backbone/bias"]["lr"] == pytest.approx(0.01)


def test_param_multipliers_with_an_unknown_prefix_fail():
    with pytest.raises(ValueError, match="'backbon'"):
        build_optimizer(
            nn.Linear(2, 2), {"type": "sgd", "param_multipliers": {"backbon": {"lr": 0.1}}}
        )


def test_l1_penalty_adds_sign_gradient_to_weights_only():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -2.0]]))
        net.bias.fill_(1.0)
    opt = build_optimizer(
        net, {"type": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "l1": 0.01}
    )
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    apply_l1_penalty(opt)
    opt.step()
    assert net.weight[0].tolist() == pytest.approx([0.5 - 0.001, -2.0 + 0.001])
    assert net.bias.item() == 1.0


def test_auto_scale_lr_applies_the_linear_scaling_rule():
    spec = {"type": "sgd", "lr": 0.02, "auto_scale_lr": True, "base_batch": 16}
    opt = build_optimizer(nn.Linear(2, 1), spec, batch_size=4)
    assert opt.defaults["lr"] == pytest.approx(0.005)
    assert all(g["lr"] == pytest.approx(0.005) for g in opt.param_groups)
    unscaled = build_optimizer(nn.Linear(2, 1), {**spec, "auto_scale_lr": False}, batch_size=4)
    assert unscaled.defaults["lr"] == 0.02
    assert linear_scaled_lr(0.01, 64, 16) == pytest.approx(0.04)


@pytest.mark.parametrize(
    "name", ["sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop", "adabound"]
)
def test_every_optimizer_builds_from_the_schema_and_takes_a_step(name):
    from tunedet.config.schema import component_model

    spec = component_model("optimizer", name)().model_dump()
    net = TinyNet()
    opt = build_optimizer(net, spec, batch_size=8)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    before = net.fc.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, net.fc.weight)
