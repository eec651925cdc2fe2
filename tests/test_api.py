"""The Python API: ``tunedet.train`` and ``tunedet.Detector``, and the package entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tunedet
from tunedet.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_demo) -> tuple[Path, dict]:
    """A tiny demo run trained through ``tunedet.train`` (returns its directory and metrics)."""
    work_dir = tmp_path_factory.mktemp("api_run")
    overrides = dict(item.split("=", 1) for item in tiny_demo)
    return tunedet.train("retinanet/demo", work_dir=work_dir, **overrides)


def test_train_returns_the_run_directory_and_final_metrics(trained):
    run_dir, metrics = trained
    assert latest_checkpoint(run_dir) is not None
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "report.html").is_file()  # as tunedet train writes it
    assert {"AP", "AP50"} <= set(metrics) and all(np.isfinite(list(metrics.values())))


def test_detector_predicts_arrays_pil_images_and_paths_alike(trained, tmp_path):
    detector = tunedet.Detector.from_checkpoint(latest_checkpoint(trained[0]), device="cpu")
    assert detector.class_names == ["circle", "square", "triangle"]
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    found = detector.predict(
        [image, Image.fromarray(image), tmp_path / "a.png", str(tmp_path / "a.png")]
    )
    assert len(found) == 4
    for other in found[1:]:
        np.testing.assert_array_equal(other.boxes, found[0].boxes)
        np.testing.assert_array_equal(other.scores, found[0].scores)
    one = detector.predict(image)  # one image in, a list of one out
    assert len(one) == 1 and one[0].boxes.shape == (len(one[0]), 4)
    assert one[0].names == [detector.class_names[label] for label in one[0].labels]


def test_detector_returns_boxes_in_the_original_images_pixels(trained):
    """An image resized by the config's transforms: boxes come back divided by the scale."""
    checkpoint = latest_checkpoint(trained[0])
    plain = tunedet.Detector.from_checkpoint(
        checkpoint, device="cpu", overrides=["model.score_thr=0"]
    )
    doubled = tunedet.Detector.from_checkpoint(
        checkpoint,
        device="cpu",
        overrides=[
            "model.score_thr=0",
            "data.val_transforms=[{type: resize, factor: 2.0}, {type: normalize}]",
        ],
    )
    image = np.kron(
        np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8),
        np.ones((8, 8, 1), np.uint8),
    )
    a, b = plain.predict(image)[0], doubled.predict(image)[0]
    assert len(a) and len(b)
    assert b.boxes.max() <= 64 and b.boxes.max() > 32  # in the 64-px image, not the 128-px input


def test_a_checkpoint_without_config_needs_one_and_accepts_it(trained, tmp_path, tiny_demo):
    state = load_checkpoint(latest_checkpoint(trained[0]))
    old = tmp_path / "old.pt"
    save_checkpoint(old, {"model": state["model"]})  # what an older tunedet wrote
    with pytest.raises(ValueError, match="carries no config"):
        tunedet.Detector.from_checkpoint(old)
    detector = tunedet.Detector.from_checkpoint(
        old, device="cpu", config="retinanet/demo", overrides=tiny_demo
    )
    assert detector.predict(np.zeros((64, 64, 3), np.uint8))[0].boxes.shape[1] == 4
    assert not detector.model.training and detector.device == torch.device("cpu")


def test_import_is_light_and_python_m_tunedet_prints_the_version():
    code = "import sys, tunedet; assert 'torch' not in sys.modules; print(tunedet.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tunedet.__version__
    out = subprocess.run(
        [sys.executable, "-m", "tunedet", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(f"tunedet {tunedet.__version__} (torch ")


def test_detector_reads_16_bit_images_as_the_datasets_do(trained, tmp_path):
    """A 16-bit PNG is scaled to 8 bits (not saturated to white): same detections as its
    8-bit version."""
    detector = tunedet.Detector.from_checkpoint(
        latest_checkpoint(trained[0]), device="cpu", overrides=["model.score_thr=0"]
    )
    grey = np.random.default_rng(2).integers(0, 256, (64, 64)).astype(np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "deep.png")  # 0..255 → 0..65535
    deep = detector.predict(tmp_path / "deep.png")[0]
    flat = detector.predict(grey.astype(np.uint8))[0]
    assert len(deep) > 0
    np.testing.assert_allclose(deep.scores, flat.scores, atol=1e-6)


def test_detector_bf16_autocast_matches_float32_within_tolerance(tiny_demo):
    """``amp="bf16"``: the convolutions run in bfloat16 and the detections of an overfit
    model (boxes, scores, labels) stay within bfloat16's precision of float32's."""
    from tunedet.config.loader import load_config
    from tunedet.data.build import build_dataset
    from tunedet.engine.build import build_model, eval_loader

    cfg = load_config("retinanet/demo", [*tiny_demo, "threads=1", "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda *_: None)
    dataset = build_dataset(cfg.data.val)
    batch = next(iter(eval_loader(cfg, dataset, batch_size=2, num_workers=0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(60):  # confident detections: overfit the two images
        optimizer.zero_grad()
        sum(model.loss(batch.images, batch.gt_boxes, batch.gt_labels).values()).backward()
        optimizer.step()
    model.eval()
    cpu = torch.device("cpu")
    dtypes = []
    model.backbone.register_forward_hook(lambda m, i, out: dtypes.append(out[-1].dtype))
    image = dataset[0]["image"]
    fp32 = tunedet.Detector(model, cfg, cpu).predict(image, score_thr=0.3)[0]
    bf16 = tunedet.Detector(model, cfg, cpu, amp="bf16").predict(image, score_thr=0.3)[0]
    assert dtypes == [torch.float32, torch.bfloat16]
    assert len(fp32) > 0 and len(bf16) == len(fp32)
    np.testing.assert_array_equal(bf16.labels, fp32.labels)
    np.testing.assert_allclose(bf16.boxes, fp32.boxes, atol=2.0)
    np.testing.assert_allclose(bf16.scores, fp32.scores, atol=0.05)
    assert bf16.scores.dtype == np.float32


def test_detector_refuses_fp16_autocast_on_the_cpu(tiny_demo):
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    cfg = load_config("retinanet/demo", list(tiny_demo))
    with pytest.raises(ValueError, match="^amp=fp16 needs a CUDA device"):
        tunedet.Detector(build_detector(cfg.model.model_dump()), cfg, torch.device("cpu"), "fp16")
