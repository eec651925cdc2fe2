"""The Python API: ``tunedet.Detector`` (a checkpoint that predicts) and ``tunedet.train``.

    import tunedet

    detector = tunedet.Detector.from_checkpoint("runs/mine/best.pt")
    for found in detector.predict(["a.jpg", "b.jpg"]):
        print(found.boxes, found.scores, found.names)

    run_dir, metrics = tunedet.train("my.yaml", **{"optim.lr": 0.01})

A checkpoint carries its resolved config and class names, so it is all ``from_checkpoint``
needs; an older checkpoint without them takes ``config=`` (a path or built-in name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ImageInput = str | os.PathLike | np.ndarray | Any  # a path, an (H, W, 3) array or a PIL image


@dataclass
class Detections:
    """What a detector found in one image, in that image's pixels.

    ``boxes (K, 4)`` xyxy float32, ``scores (K,)`` float32 in decreasing order, ``labels
    (K,)`` int64 0-based class indices, ``names`` the class name of each label."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


def load_model(
    checkpoint: str | os.PathLike,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> tuple[torch.nn.Module, Any, torch.device]:
    """``(model in eval mode, config, device)`` of ``checkpoint``: the config is the
    checkpoint's own unless ``config`` (a path or built-in name) is given; ``device``
    ("auto", "cpu", "cuda:1", ...) replaces the config's. EMA weights when the run had EMA;
    ``model.classes`` holds the class names."""
    from tunedet.engine.build import config_for_checkpoint, model_on_device

    overrides = [*overrides, *([f"device={device}"] if device is not None else [])]
    cfg = config_for_checkpoint(checkpoint, config, overrides)
    model, device = model_on_device(cfg, checkpoint)
    return model, cfg, device


def read_rgb(image: ImageInput) -> np.ndarray:
    """An ``(H, W, 3) uint8`` RGB array from a path or a PIL image (as the datasets read
    them: EXIF orientation applied, 16-bit and float images scaled to 8 bits; see
    `data.annotated_images.to_rgb8`) or an array (``(H, W, 3)`` RGB or ``(H, W)`` grey;
    uint8, or numbers in 0..255)."""
    from PIL import Image

    from tunedet.data.annotated_images import load_rgb, to_rgb8

    if isinstance(image, (str, os.PathLike)):
        return load_rgb(Path(image), str(image))
    if isinstance(image, Image.Image):
        return to_rgb8(image, "image")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be (H, W, 3) RGB, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


class Detector:
    """A trained detector with its preprocessing (the config's validation transforms),
    test-time options (``eval.tta``, ``eval.sliced``) and class names.

    ``Detector.from_checkpoint(path)`` builds it; ``predict(images)`` returns one
    `Detections` per image, boxes in the original image's pixels. ``amp="bf16"`` runs the
    network under bfloat16 autocast (CPU or CUDA; ``"fp16"``: CUDA only), the
    post-processing in float32."""

    def __init__(self, model: torch.nn.Module, cfg: Any, device: torch.device, amp: str = "none"):
        from tunedet.data.build import build_transforms
        from tunedet.engine.amp import check_amp
        from tunedet.engine.test_time_augmentation import with_tta

        check_amp(amp, device, name="amp")
        self.model = model
        self.amp = amp
        self.cfg = cfg
        self.device = device
        self.class_names: list[str] = list(getattr(model, "classes", None) or [])
        self.transforms = build_transforms(cfg.data.val_transforms)
        self._predictor = with_tta(model, cfg.eval.tta, cfg.data.size_divisor)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        config: str | os.PathLike | None = None,
        overrides: Sequence[str] = (),
        amp: str = "none",
    ) -> Detector:
        """Load ``path`` (a tunedet checkpoint; its config unless ``config`` is given) on
        ``device`` ("auto": CUDA, then MPS, then CPU); ``amp``: "none", "bf16" or "fp16"."""
        model, cfg, torch_device = load_model(path, config, overrides, device)
        return cls(model, cfg, torch_device, amp)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], score_thr: float = 0.0
    ) -> list[Detections]:
        """Detections of one image or a list of images (paths, PIL images or ``(H, W, 3)``
        RGB arrays), one `Detections` per image, those scoring below ``score_thr`` dropped
        (the model's own ``score_thr`` applies first)."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, Sequence):
            images = [images]
        return [self._predict_one(read_rgb(image), score_thr) for image in images]

    def _predict_one(self, image: np.ndarray, score_thr: float) -> Detections:
        from tunedet.data.loader import collate_detection
        from tunedet.engine.amp import autocast

        if self.cfg.eval.sliced is not None:  # tiles of the whole image, merged
            from tunedet.engine.sliced_inference import sliced_predict

            with autocast(self.amp, self.device):
                pred = sliced_predict(
                    self._predictor,
                    image,
                    self.transforms,
                    self.device,
                    size_divisor=self.cfg.data.size_divisor,
                    **self.cfg.eval.sliced.model_dump(),
                )
            scale = 1.0
        else:
            sample = {
                "image": image,
                "boxes": np.zeros((0, 4), np.float32),
                "labels": np.zeros((0,), np.int64),
                "image_id": 0,
                "file": "",
                "orig_size": image.shape[:2],
                "scale": 1.0,
            }
            rng = np.random.default_rng(0)
            for transform in self.transforms:
                sample = transform(sample, rng)
            batch = collate_detection([sample], size_divisor=self.cfg.data.size_divisor)
            batch = batch.to(self.device)
            with torch.no_grad(), autocast(self.amp, self.device):
                pred = self._predictor.predict(batch.images, batch.image_sizes)[0]
            scale = batch.metas[0]["scale"]
        keep = pred["scores"] >= score_thr
        height, width = image.shape[:2]
        boxes = (pred["boxes"][keep].float() / scale).cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = pred["labels"][keep].cpu().long().numpy()
        names = [self.class_name(int(label)) for label in labels]
        return Detections(
            boxes.numpy().astype(np.float32),
            pred["scores"][keep].float().cpu().numpy(),
            labels,
            names,
        )

    def class_name(self, label: int) -> str:
        """The name of 0-based ``label`` (its number as text when the names are unknown)."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


def train(
    config: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    report: bool = True,
    **overrides: Any,
) -> tuple[Path, dict[str, float]]:
    """Train ``config`` (a path or built-in name) with dotted ``overrides`` given as keyword
    arguments (``**{"optim.lr": 0.01}``, or ``max_iters`` style top-level keys; values are
    YAML-parsed strings or Python values) and return ``(run directory, final metrics)``.
    ``report``: write the run's ``report.html``, as ``tunedet train`` does."""
    import json

    from tunedet.cli.main import run_dir_for, write_run_report
    from tunedet.config.loader import load_config
    from tunedet.engine.trainer import Trainer

    texts = [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in overrides.items()
    ]
    cfg = load_config(str(config), texts)
    run_dir = run_dir_for(cfg, str(config), None if work_dir is None else str(work_dir))
    trainer = Trainer(cfg, run_dir)
    metrics = trainer.train()
    if report:
        write_run_report(trainer, metrics)
    return Path(getattr(trainer, "run_dir", run_dir)), dict(metrics or {})
