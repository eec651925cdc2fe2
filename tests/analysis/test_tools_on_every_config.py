"""Every ``tunedet analyze`` tool that reads a config runs on every shipped config, or refuses
it in one line (exit 2, no traceback).

Each experiment config keeps its model as shipped (no pretrained weights) and reads a few
64-px synthetic images (SSD's fixed input size where it declares one); figures are drawn but
not rasterised (``Figure.savefig`` writes a stub: the PNGs themselves are checked by each
tool's own test) and each model is built once and copied to the tools, so the loop stays
quick. ``errors`` gets the model's untrained weights
when the model is small; a large preset (ResNet-50, Darknet-53, VGG-16: hundreds of MB to
write) gets a small model's checkpoint instead, which it must refuse in one line, and is
not put through ``lr-finder`` (training steps of a large model take most of this test's
time; the tool only calls ``model.loss``, which ``test_shipped_configs`` trains for every
preset, and it runs on every small config here). The
search-space files under ``configs/tuning`` are refused in one line by every tool. Tools
are found from the parser, so a tool added later is covered (give it tiny arguments in
``TINY_ARGS``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml

from tunedet.cli.main import build_parser, main
from tunedet.config.loader import BUILTIN_CONFIG_DIR, load_raw

CONFIG_FILES = sorted(BUILTIN_CONFIG_DIR.rglob("*.yaml"))
EXPERIMENTS = [p for p in CONFIG_FILES if "model" in load_raw(p)]
SPACES = [p for p in CONFIG_FILES if p not in EXPERIMENTS]


def config_tools() -> list[str]:
    """The analyze tools whose first positional argument is a config."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    tools = next(a for a in commands["analyze"]._actions if a.dest == "tool").choices
    return sorted(
        name
        for name, tool in tools.items()
        if any(a.dest == "config" for a in tool._actions if not a.option_strings)
    )


TOOLS = config_tools()
# tiny arguments per tool ({out}: a folder of the test; {ckpt}: the model's untrained weights;
# {size}: the tiny images' side)
TINY_ARGS = {
    "anchors": ["--max-images", "4", "--k", "3", "--out", "{out}"],
    "assign": ["--num-images", "1", "--out", "{out}/assign.png"],
    "augment": ["-n", "1", "--out", "{out}/augment.png"],
    "dataset": ["--max-images", "4", "--out", "{out}"],
    "errors": ["--checkpoint", "{ckpt}", "--num-images", "1", "--out", "{out}"],
    "flops": ["--depth", "1", "--out", "{out}/flops.png"],
    "init": ["--images", "1"],
    "receptive-field": ["--size", "{size}", "--samples", "1", "--out", "{out}/rf.png"],
    "lr": ["--out", "{out}/lr.png"],
    "lr-finder": ["--iters", "2", "--out", "{out}/lr_finder.png"],
}
# (tool, model.type) pairs refused by design, with a word of the one-line reason
REFUSED = {
    ("assign", "faster_rcnn"): "two stages",
    ("assign", "mask_rcnn"): "two stages",
    ("anchors", "cornernet"): "has no anchors",  # corner heatmaps, no anchor generator
    ("assign", "cornernet"): "has no anchors",
    ("assign", "fsaf"): "exposes no assign_targets",  # online feature selection in its loss
}


def tiny_config(path: Path, folder: Path) -> tuple[Path, str, int]:
    """The shipped config with tiny synthetic data, no pretrained weights, one thread; the
    model type and the images' side."""
    raw = load_raw(path)
    model = dict(raw["model"])
    declared = [model.get(k, {}).get("input_size") for k in ("neck", "anchor_generator")]
    size = next((s for s in declared if s), 64)
    classes = model["num_classes"] = min(3, model.get("num_classes") or 3)
    masks = model["type"] == "mask_rcnn"
    split = {"type": "synthetic", "image_size": size, "num_classes": classes, "masks": masks}
    raw["data"] = {
        "train": {**split, "num_images": 4, "seed": 0},
        "val": {**split, "num_images": 2, "seed": 1},
        "train_transforms": [{"type": "normalize"}],
        "val_transforms": [{"type": "normalize"}],
        "batch_size": 2,
        "num_workers": 0,
        "size_divisor": raw.get("data", {}).get("size_divisor", 32),
    }
    raw["train"] = {"max_iters": 4, "progress": False, "eval_every": 0}
    raw.update(threads=1, device="cpu", load_from=None, work_dir=None)
    if "init" in model.get("backbone", {}):
        model["backbone"] = {**model["backbone"], "init": "none"}
    raw["model"] = model
    out = folder / "config.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out, model["type"], size


def run_tool(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def test_the_tools_are_found():
    assert {"anchors", "assign", "flops", "lr", "lr-finder", "errors"} <= set(TOOLS)


@pytest.fixture()
def no_rasterising(monkeypatch):
    import matplotlib.figure

    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda self, path, **_: Path(path).write_bytes(b"!")
    )


@pytest.fixture()
def one_model_build(monkeypatch):
    """Build each detector spec once per test, hand the tools copies (building a large
    preset is most of a tool's run here; the copy has the same weights and buffers)."""
    import copy
    import json

    import tunedet.models

    build, built = tunedet.models.build_detector, {}

    def cached(spec, *args, **kwargs):
        key = json.dumps([spec, args, kwargs], sort_keys=True, default=str)
        if key not in built:
            built[key] = build(spec, *args, **kwargs)
        return copy.deepcopy(built[key])

    monkeypatch.setattr(tunedet.models, "build_detector", cached)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """Untrained weights of a tiny RetinaNet: another model for the large presets."""
    from tunedet.config.loader import load_config
    from tunedet.engine.checkpoint import save_checkpoint
    from tunedet.models import build_detector

    model = build_detector(load_config("retinanet/demo").model.model_dump())
    path = tmp_path_factory.mktemp("small") / "small.pt"
    save_checkpoint(path, {"model": model.state_dict()})
    return path


LARGE = 20_000_000  # parameters above which a preset's checkpoint is not written
TRAINING_TOOLS = {"lr-finder"}  # tools that take optimiser steps: small configs only


@pytest.mark.parametrize(
    "path", EXPERIMENTS, ids=[str(p.relative_to(BUILTIN_CONFIG_DIR)) for p in EXPERIMENTS]
)
def test_every_tool_runs_on_the_config_or_refuses_in_one_line(
    path: Path, tmp_path: Path, no_rasterising, one_model_build, small_checkpoint: Path
):
    from tunedet.config.loader import load_config
    from tunedet.engine.checkpoint import save_checkpoint
    from tunedet.models import build_detector

    config, model_type, size = tiny_config(path, tmp_path)
    torch.manual_seed(0)
    model = build_detector(load_config(str(config)).model.model_dump())
    large = sum(p.numel() for p in model.parameters()) > LARGE
    ckpt = small_checkpoint if large else tmp_path / "model.pt"
    if not large:  # untrained weights: the tool needs a checkpoint, not a good one
        save_checkpoint(ckpt, {"model": model.state_dict()})
    del model
    refused = dict(REFUSED)
    if large:
        refused[("errors", model_type)] = str(small_checkpoint)
    for tool in TOOLS:
        if large and tool in TRAINING_TOOLS:
            continue
        out = tmp_path / tool
        args = [a.format(out=out, ckpt=ckpt, size=size) for a in TINY_ARGS.get(tool, [])]
        rc, err = run_tool(["analyze", tool, str(config), *args])
        assert "Traceback" not in err, (tool, err)
        reason = refused.get((tool, model_type))
        if reason is None:
            assert rc == 0, (tool, err)
            if "--out" in args:
                assert any(out.parent.glob(f"{out.name}*")), tool  # it wrote its output
        else:
            lines = [line for line in err.splitlines() if line.strip()]
            assert rc == 2 and len(lines) == 1 and reason in lines[0], (tool, err)


@pytest.mark.parametrize(
    "path", SPACES, ids=[str(p.relative_to(BUILTIN_CONFIG_DIR)) for p in SPACES]
)
def test_every_tool_refuses_a_search_space_file_in_one_line(path: Path, tmp_path: Path):
    name = str(path.relative_to(BUILTIN_CONFIG_DIR).with_suffix(""))
    for tool in TOOLS:
        args = [
            a.format(out=tmp_path, ckpt=tmp_path / "x.pt", size=64) for a in TINY_ARGS.get(tool, [])
        ]
        rc, err = run_tool(["analyze", tool, name, *args])
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and "error:" in lines[0], (tool, err)
