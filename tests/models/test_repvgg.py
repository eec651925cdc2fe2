"""RepVGG: the multi-branch block folds into one 3×3 conv with the same outputs."""

import pytest
import torch
from torch import nn

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.config.registry import build
from tunedet.engine.checkpoint import save_checkpoint
from tunedet.models import build_detector
from tunedet.models.backbones.repvgg import RepVGGBlock
from tunedet.models.reparam import reparameterize

TINY_REPVGG = "model.backbone={type: repvgg, widths: [8, 8, 16, 16, 32], depths: [1, 2, 1, 2, 1]}"


def randomise_batch_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("in_channels, out_channels, stride", [(4, 4, 1), (4, 6, 1), (4, 6, 2)])
def test_block_folds_into_one_conv_with_equal_outputs(in_channels, out_channels, stride):
    torch.manual_seed(0)
    block = RepVGGBlock(in_channels, out_channels, stride).double()
    randomise_batch_norms(block)
    block.eval()
    assert (block.identity is not None) == (in_channels == out_channels and stride == 1)
    x = torch.randn(2, in_channels, 9, 8, dtype=torch.float64)
    branches = block(x)
    block.reparameterize()
    assert isinstance(block.fused, nn.Conv2d) and block.fused.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(block(x), branches, rtol=0, atol=1e-10)


def test_block_branches_are_the_sum_of_three_batch_normed_paths():
    torch.manual_seed(0)
    block = RepVGGBlock(3, 3).double()
    randomise_batch_norms(block)
    block.eval()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)

    def bn(layer, z):
        return (z - layer.running_mean.view(1, -1, 1, 1)) / (
            layer.running_var.view(1, -1, 1, 1) + layer.eps
        ).sqrt() * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)

    conv3 = torch.nn.functional.conv2d(x, block.dense.conv.weight, padding=1)
    conv1 = torch.nn.functional.conv2d(x, block.pointwise.conv.weight)
    expected = torch.relu(
        bn(block.dense.bn, conv3) + bn(block.pointwise.bn, conv1) + bn(block.identity, x)
    )
    torch.testing.assert_close(block(x), expected)


def test_repvgg_a0_backbone_folds_to_a_plain_conv_stack_with_the_papers_size():
    torch.manual_seed(0)
    model = build("backbone", {"type": "repvgg", "out_indices": [1, 2, 3, 4]})
    model.train()
    with torch.no_grad():  # move the BN statistics away from their initial values
        model(torch.randn(4, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(x)
        assert reparameterize(model) == 22  # RepVGG-A0: 1 + 2 + 4 + 14 + 1 blocks
        after = model(x)
    for got, want in zip(after, before, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    layers = {type(m) for m in model.modules() if not list(m.children())}
    assert layers == {nn.Conv2d, nn.ReLU}
    # RepVGG-A0 deploys with 8.30M parameters including its 1280 → 1000 classifier
    params = sum(p.numel() for p in model.parameters()) + 1280 * 1000 + 1000
    assert params == pytest.approx(8.30e6, abs=0.01e6)
    assert reparameterize(model) == 0


def test_export_reparam_folds_the_blocks_and_matches_eager(tmp_path, tiny_demo, capsys):
    overrides = [*tiny_demo, "threads=1", TINY_REPVGG]
    torch.manual_seed(0)
    model = build_detector(load_config("retinanet/demo", overrides).model.model_dump())
    randomise_batch_norms(model.backbone)
    ckpt = tmp_path / "repvgg.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "classes": ["a", "b", "c"]})
    out = tmp_path / "m.onnx"
    argv = ["export", "retinanet/demo", *overrides, "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*argv, "--reparam"]) == 0
    printed = capsys.readouterr().out
    assert "re-parameterised 7 multi-branch blocks" in printed
    folding = float(printed.split("folded vs multi-branch network: ")[1].split()[0])
    assert folding < 1e-5
    diff = float(printed.split("max abs difference vs eager (")[1].split("): ")[1].split()[0])
    assert diff < 1e-3
