import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tunedet.config.registry import REGISTRIES, build
from tunedet.models.backbones import ResNetBackbone, TinyCNN
from tunedet.models.layers import ConvNormAct, group_count, make_activation, make_norm

EXPECTED_CHANNELS = {
    "resnet18": [128, 256, 512],
    "resnet34": [128, 256, 512],
    "resnet50": [512, 1024, 2048],
    "tiny_cnn": [64, 128, 160],
}


def _bn_layers(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_backbone_outputs_match_out_channels_and_strides(name):
    model = build("backbone", {"type": name}).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
    assert model.out_channels == EXPECTED_CHANNELS[name]
    assert model.strides == [8, 16, 32]
    assert [f.shape for f in feats] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(model.out_channels, model.strides, strict=True)
    ]


def test_resnet_drops_classifier_and_unused_stages():
    model = ResNetBackbone(18, out_indices=(1, 2))
    names = {name for name, _ in model.named_children()}
    assert not names & {"fc", "avgpool", "layer3", "layer4"}
    assert model.strides == [4, 8] and model.out_channels == [64, 128]
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8]


def test_tiny_cnn_out_indices_select_strides():
    model = TinyCNN(out_indices=(1, 4), blocks_per_stage=0).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 96))
    assert model.strides == [4, 32]
    assert [f.shape for f in feats] == [(1, 32, 24, 24), (1, 160, 3, 3)]


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_resnet_norm_choice_replaces_batch_norm(norm):
    model = ResNetBackbone(18, norm=norm)
    assert not _bn_layers(model)
    kind = FrozenBatchNorm2d if norm == "frozen_bn" else nn.GroupNorm
    assert isinstance(model.bn1, kind)


def test_bad_out_indices_are_rejected():
    with pytest.raises(ValueError, match="out_indices"):
        TinyCNN(out_indices=(0, 2))
    with pytest.raises(ValueError, match="out_indices"):
        ResNetBackbone(18, out_indices=(2, 2))


def _make(name: str, **kwargs) -> nn.Module:
    return build("backbone", {"type": name, **kwargs})


@pytest.mark.parametrize("name", ["resnet18", "tiny_cnn"])
def test_frozen_stages_stay_eval_and_without_grad_after_train(name):
    model = _make(name, frozen_stages=2)
    model.eval()
    model.train()
    stages = model.stages()
    for stage in stages[:3]:
        assert all(not p.requires_grad for p in stage.parameters())
        assert all(not bn.training for bn in _bn_layers(stage))
    for stage in stages[3:]:
        assert all(p.requires_grad for p in stage.parameters())
        assert all(bn.training for bn in _bn_layers(stage))


@pytest.mark.parametrize("name", ["resnet18", "tiny_cnn"])
def test_sgd_step_leaves_frozen_weights_and_bn_stats_unchanged(name):
    torch.manual_seed(0)
    model = _make(name, frozen_stages=1)
    model.train()
    frozen, trained = model.stages()[:2], model.stages()[2:]
    before_frozen = [{k: v.clone() for k, v in s.state_dict().items()} for s in frozen]
    before_trained = [{k: v.clone() for k, v in s.state_dict().items()} for s in trained]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = sum(f.pow(2).mean() for f in model(torch.randn(2, 3, 32, 32)))
    loss.backward()
    opt.step()
    for stage, before in zip(frozen, before_frozen, strict=True):
        for key, value in stage.state_dict().items():
            assert torch.equal(value, before[key]), key
    for stage, before in zip(trained, before_trained, strict=True):
        state = stage.state_dict()
        changed_weights = [
            k for k in before if k.endswith("weight") and not torch.equal(state[k], before[k])
        ]
        changed_stats = [
            k for k in before if k.endswith("running_mean") and not torch.equal(state[k], before[k])
        ]
        assert changed_weights and changed_stats


@pytest.mark.parametrize("name", ["resnet18", "tiny_cnn"])
def test_norm_eval_keeps_every_bn_in_eval_mode(name):
    model = _make(name, norm_eval=True)
    model.train()
    bns = _bn_layers(model)
    assert bns and all(not bn.training for bn in bns)
    assert all(p.requires_grad for p in model.parameters())
    stats = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats, strict=True))
    assert model.layer4.training if name == "resnet18" else model.layers[-1].training


def test_backbones_are_registered():
    names = set(REGISTRIES["backbone"].names())
    assert {"resnet18", "resnet34", "resnet50", "tiny_cnn"} <= names


def test_make_norm_clamps_groups_to_a_divisor():
    assert group_count(48, 32) == 24
    assert group_count(16, 32) == 16
    gn = make_norm("gn", 48)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 24
    assert isinstance(make_norm("none", 8), nn.Identity)
    assert isinstance(make_norm("frozen_bn", 8), FrozenBatchNorm2d)


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "relu6", "silu", "hardswish", "gelu"])
def test_make_activation_builds_every_kind(kind):
    act = make_activation(kind)
    assert act(torch.tensor([-1.0, 2.0])).shape == (2,)


def test_separable_conv_norm_act_has_fewer_params():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    full = ConvNormAct(64, 64, 3, separable=False)
    light = ConvNormAct(64, 64, 3, separable=True)
    assert count(light) < count(full) / 5
    x = torch.randn(1, 64, 9, 9)
    assert light(x).shape == full(x).shape == (1, 64, 9, 9)
