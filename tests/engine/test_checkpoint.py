import random

import numpy as np
import pytest
import torch
from torch import nn

from tunedet.engine import checkpoint as ckpt
from tunedet.engine.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Opaque:
    """Not a tensor or plain container: weights-only loading must refuse it."""

    def __init__(self):
        self.value = 3


def full_state():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "iteration": 120,
        "rng": rng_state(),
        "meta": {"config": "a: 1", "shape": (2, 3)},
    }


def test_checkpoint_round_trip_keeps_tensors_and_plain_values(tmp_path):
    state = full_state()
    path = save_checkpoint(checkpoint_path(tmp_path, 120), state)
    assert path == tmp_path / "checkpoints" / "iter_0000120.pt"
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 120
    assert loaded["meta"] == state["meta"]
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert [p.name for p in tmp_path.joinpath("checkpoints").iterdir()] == ["iter_0000120.pt"]


def test_crash_between_temp_write_and_replace_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})

    def crash(src, dst):
        raise OSError("simulated power loss")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file removed


def test_failed_write_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    path = tmp_path / "iter_0000002.pt"
    save_checkpoint(path, {"iteration": 1})

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64\nmore")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, {"iteration": 2})
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "unexpected pos 64" in message and "MB free" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # temp file removed


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_checkpoint_raises_one_line_error_naming_file(tmp_path, keep):
    path = tmp_path / "iter_0000010.pt"
    save_checkpoint(path, {"w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_garbage_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(path)) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_pickled_custom_object_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "Opaque" in message and "weights_only" in message
    assert "\n" not in message


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_latest_checkpoint_picks_highest_valid_iteration(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for it in (100, 200, 300):
        save_checkpoint(checkpoint_path(tmp_path, it), {"iteration": it})
    newest = checkpoint_path(tmp_path, 300)
    newest.write_bytes(newest.read_bytes()[:20])  # a torn write from an older, non-atomic tool
    (tmp_path / "checkpoints" / ".iter_0000400.pt.abc.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 200)
    assert latest_checkpoint(tmp_path / "checkpoints") == checkpoint_path(tmp_path, 200)


def test_prune_checkpoints_keeps_the_newest(tmp_path):
    for it in (5, 10, 15, 20):
        save_checkpoint(checkpoint_path(tmp_path, it), {"iteration": it})
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["iter_0000005.pt", "iter_0000010.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "iter_0000015.pt",
        "iter_0000020.pt",
    ]


def draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_state_round_trip_through_a_file_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's generator
    np.random.randn()  # ... and in numpy's
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draws() != first
    set_rng_state(load_checkpoint(path)["rng"])
    assert draws() == first


def test_load_model_state_loads_a_matching_state():
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    load_model_state(dst, src.state_dict())
    assert torch.equal(dst.weight, src.weight)


def test_load_model_state_names_first_missing_key():
    state = nn.Sequential(nn.Linear(3, 2)).state_dict()
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"missing key '1\.weight' \(and 1 more\)") as info:
        load_model_state(model, state, source="runs/a/iter_0000010.pt")
    assert "from runs/a/iter_0000010.pt" in str(info.value)
    assert "another model" in str(info.value)


def test_load_model_state_names_first_unexpected_key():
    state = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected key '1\.weight'"):
        load_model_state(nn.Sequential(nn.Linear(3, 2)), state)


def test_load_model_state_names_shape_mismatch_with_both_shapes():
    state = nn.Sequential(nn.Linear(3, 80)).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_model_state(nn.Sequential(nn.Linear(3, 20)), state)
    message = str(info.value)
    assert "shape mismatch for '0.weight': checkpoint (80, 3) vs model (20, 3)" in message
    assert "\n" not in message
