"""The end-to-end ONNX graph (image → detections), run as a user runs it: ONNX Runtime alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tunedet.api import Detector
from tunedet.cli.main import main
from tunedet.config.loader import load_config, to_plain
from tunedet.deploy.end_to_end import dense_kind, resize_weights
from tunedet.engine.checkpoint import save_checkpoint
from tunedet.models import build_detector

# Runs in a fresh interpreter: onnxruntime and numpy only, never tunedet.
RUN_ONNX = """
import json, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
out = {"class_names": json.loads(meta["class_names"]), "input_size": int(meta["input_size"])}
out["detections"] = []
for name in sys.argv[2:]:
    boxes, scores, labels = session.run(None, {"image": np.load(name)})
    out["detections"].append([boxes.tolist(), scores.tolist(), labels.tolist()])
assert "tunedet" not in sys.modules and "torch" not in sys.modules
print(json.dumps(out))
"""


def spread_checkpoint(tmp_path, overrides, name: str = "ckpt.pt"):
    """An untrained model whose class scores are spread out (perturbed head), saved with its
    config as a plain dict and its class names, as a training run saves them."""
    cfg = load_config("retinanet/demo", overrides)
    torch.manual_seed(0)
    model = build_detector(cfg.model.model_dump())
    with torch.no_grad():
        for param in model.head.parameters():
            param.add_(0.3 * torch.randn_like(param))
    path = tmp_path / name
    state = {
        "model": model.state_dict(),
        "config": to_plain(cfg.model_dump(mode="json")),
        "class_names": ["cat", "dog", "fox"],
    }
    save_checkpoint(path, state)
    return path


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def assert_same_detections(exported, eager, atol: float = 1e-3) -> None:
    """Each exported detection has an eager one of its label with score and box within
    ``atol``, one to one (equal scores may swap)."""
    boxes, scores, labels = (np.asarray(v, np.float64) for v in exported)
    assert len(scores) == len(eager) > 0
    unused = set(range(len(eager)))
    for box, score, label in zip(boxes, scores, labels, strict=True):
        match = [
            j
            for j in unused
            if eager.labels[j] == label
            and abs(eager.scores[j] - score) <= atol
            and np.abs(eager.boxes[j] - box).max() <= atol
        ]
        assert match, f"no eager detection of label {label} at {box} ({score})"
        unused.remove(match[0])


def test_onnx_end_to_end_equals_eager_without_tunedet(tmp_path, tiny_demo, capsys):
    overrides = [*tiny_demo, "model.score_thr=0.2"]
    checkpoint = spread_checkpoint(tmp_path, overrides)
    assert main(["export", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert (
        float(printed.split("max abs difference vs eager (detections (boxes, scores)): ")[1]) < 1e-3
    )
    onnx_file = checkpoint.with_suffix(".onnx")
    # the input size (64 px), and sizes whose shorter side eager pads to 64 too (size divisor 32)
    images = [smooth_image(64, 64, 1), smooth_image(40, 64, 2), smooth_image(64, 48, 3)]
    names = []
    for k, image in enumerate(images):
        names.append(str(tmp_path / f"{k}.npy"))
        np.save(names[-1], image)
    script = tmp_path / "run_onnx.py"
    script.write_text(RUN_ONNX)
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(onnx_file), *names],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["class_names"] == ["cat", "dog", "fox"] and result["input_size"] == 64
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    for exported, image in zip(result["detections"], images, strict=True):
        assert_same_detections(exported, detector.predict(image)[0])


@pytest.mark.parametrize("size, out", [(100, 37), (37, 100), (64, 64), (90, 45)])
def test_resize_weights_are_pils_bilinear_filter(size, out):
    """One row of pixels resized by the weights equals PIL's bilinear resize to within its
    8-bit rounding, downscaling (widened triangle) and upscaling alike."""
    row = np.random.default_rng(size).integers(0, 256, (1, size), np.uint8)
    pil = np.asarray(Image.fromarray(row).resize((out, 1), Image.Resampling.BILINEAR), np.float64)
    source = torch.arange(size, dtype=torch.float64)
    weights = resize_weights(
        source, out + 5, torch.tensor(out / size), torch.tensor(float(out)), torch.float64
    )
    ours = weights.numpy() @ row[0].astype(np.float64)
    np.testing.assert_allclose(ours[:out], pil[0], atol=0.51)
    assert (ours[out:] == 0).all()  # rows past the resized size: padding


def test_a_detector_the_graph_cannot_reproduce_is_refused_in_one_line():
    """Faster R-CNN's two stages are not a dense head: export names it and offers --raw."""
    cfg = load_config("faster_rcnn/demo")
    model = build_detector(cfg.model.model_dump())
    with pytest.raises(ValueError, match="not FasterRCNN: use --raw"):
        dense_kind(model)
