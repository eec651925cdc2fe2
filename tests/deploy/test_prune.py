"""Pruning: magnitude masks by |w| rank, L1-norm channel surgery that keeps the network's
function on the kept channels, pruned checkpoints that load, and ``tunedet prune``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tunedet.cli.main import main
from tunedet.cli.prune import free_path
from tunedet.deploy.prune import (
    apply_masks,
    channel_chains,
    filter_l1_norms,
    l1_channel_prune,
    magnitude_prune,
    nonzero_parameters,
    restore_pruned_structure,
)


def test_magnitude_prune_zeroes_the_smallest_weights_of_each_layer():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.Flatten(), nn.LazyLinear(4)
    )
    net(torch.randn(1, 3, 6, 6))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    masks = magnitude_prune(net, 0.3)
    assert set(masks) == {"0.weight", "2.weight", "4.weight"}
    for name, mask in masks.items():
        w = before[name].abs().flatten()
        k = int(0.3 * w.numel())
        assert (~mask).sum() == k
        # every pruned |w| is <= every kept |w|, and the pruned weights are now 0
        assert w[~mask.flatten()].max() <= w[mask.flatten()].min()
        assert (dict(net.named_parameters())[name][~mask] == 0).all()
    assert (net[0].bias == before["0.bias"]).all()  # biases untouched
    assert nonzero_parameters(net) == sum(p.numel() for p in net.parameters()) - sum(
        int((~m).sum()) for m in masks.values()
    )


def test_masks_keep_pruned_weights_at_zero_through_optimizer_steps():
    torch.manual_seed(1)
    net = nn.Linear(10, 10)
    masks = magnitude_prune(net, 0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(4, 10)).square().sum().backward()
    opt.step()
    assert (net.weight[~masks["weight"]] != 0).any()  # the step moved them ...
    apply_masks(net, masks)
    assert (net.weight[~masks["weight"]] == 0).all()  # ... and the masks put them back


def zero_removed_inputs(block, name_next, keep):
    """The unpruned network with the removed channels' contributions cut: the reference a
    correct channel surgery must equal exactly."""
    nxt = getattr(block, name_next)
    removed = torch.ones(nxt.in_channels, dtype=torch.bool)
    removed[keep] = False
    with torch.no_grad():
        nxt.weight[:, removed] = 0


@pytest.mark.parametrize("block_type", ["basic", "bottleneck"])
def test_l1_channel_prune_keeps_the_largest_filters_and_the_blocks_function(block_type):
    torch.manual_seed(2)
    block = BasicBlock(16, 16) if block_type == "basic" else Bottleneck(32, 8)
    for m in block.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    block.eval()
    cut = copy.deepcopy(block)
    original = {
        name: m.weight.detach().clone()
        for name, m in block.named_children()
        if name.startswith("conv")
    }
    chains = channel_chains(block)
    assert [c.name for c in chains] == (["conv1"] if block_type == "basic" else ["conv1", "conv2"])
    norms = {c.name: filter_l1_norms(c.get("conv")) for c in chains}
    widths = l1_channel_prune(block, 0.25)
    keeps = {}
    for name, norm in norms.items():
        width = norm.numel() - int(0.25 * norm.numel())
        assert widths[name] == width and getattr(block, name).out_channels == width
        keeps[name] = norm.topk(width).indices.sort().values  # the largest L1 norms
        zero_removed_inputs(cut, {"conv1": "conv2", "conv2": "conv3"}[name], keeps[name])
    torch.testing.assert_close(block.conv1.weight, original["conv1"][keeps["conv1"]])
    if block_type == "bottleneck":
        torch.testing.assert_close(
            block.conv2.weight, original["conv2"][keeps["conv2"]][:, keeps["conv1"]]
        )
    x = torch.randn(2, block.conv1.in_channels, 9, 9)
    torch.testing.assert_close(block(x), cut(x), rtol=1e-5, atol=1e-5)


def test_a_pruned_state_loads_into_a_fresh_model_after_restoring_its_widths():
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    overrides = ["model.backbone.type=resnet18", "model.backbone.init=none"]
    cfg = load_config("retinanet/demo", overrides)
    torch.manual_seed(3)
    model = build_detector(cfg.model.model_dump()).eval()
    widths = l1_channel_prune(model, 0.5)
    assert len(widths) == 8 and set(widths.values()) == {32, 64, 128, 256}  # resnet18: 2 per stage
    fresh = build_detector(cfg.model.model_dump()).eval()
    restore_pruned_structure(fresh, {"pruning": {"widths": widths}})
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x)[0], model(x)[0])


def test_a_model_without_chains_is_refused():
    with pytest.raises(ValueError, match="no conv → BatchNorm → conv chain"):
        l1_channel_prune(nn.Sequential(nn.Conv2d(3, 4, 3)), 0.3)
    with pytest.raises(ValueError, match="ratio"):
        magnitude_prune(nn.Linear(2, 2), 1.0)


def test_prune_cli_writes_a_checkpoint_that_eval_loads(tmp_path: Path, tiny_demo, capsys):
    plain = [*tiny_demo, "model.backbone.residual=false"]  # VGG-style stages: prunable chains
    run = tmp_path / "run"
    assert main(["train", "retinanet/demo", *plain, "--work-dir", str(run)]) == 0
    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    capsys.readouterr()
    args = ["prune", str(ckpt), "--method", "l1-channel", "--ratio", "0.5", "--repeats", "1"]
    args += ["--finetune-iters", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| l1-channel 0.5 |" in out and "| + fine-tune 1 it |" in out
    pruned = ckpt.with_name(f"{ckpt.stem}_l1-channel_0.5.pt")
    assert pruned.exists()
    assert free_path(pruned) == pruned.with_name(f"{pruned.stem}-2.pt")  # never overwritten
    capsys.readouterr()
    eval_args = ["eval", "retinanet/demo", *plain, "--checkpoint", str(pruned), "--json"]
    assert main(eval_args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= report["AP"] <= 1.0
