"""Start from pretrained weights: a backbone's ImageNet weights, a whole detector's
checkpoint (mmdetection's ``load_from``, Detectron's ``TRAIN.WEIGHTS``), and freezing
parameters by name.

- ``backbone_init_state(init, arch)``: ``init`` is ``"none"``, ``"imagenet"`` (torchvision's
  own weights for the architecture, fetched through torchvision's weights API into
  ``torch.hub.get_dir()/checkpoints``) or a file path. Offline without the cached file it
  fails at once, naming the file and the folder to put it in.
- ``load_detector_weights(model, path)``: a tunedet checkpoint or state dict, or a
  torchvision detection state dict (converted by ``models.convert``). Tensors whose
  output size differs (another class count) keep the model's fresh initialisation; any
  other shape difference means a checkpoint of another model and fails in one line.
- ``freeze_parameters(model, patterns)``: ``requires_grad = False`` on the parameters
  whose name matches a glob pattern (the optimizer then skips them).
"""

from __future__ import annotations

import fnmatch
import os
import urllib.error
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from tunedet.models.convert import convert_torchvision_detector, torchvision_architecture
from tunedet.models.weights_file import CheckpointError, read_weights_file

# torchvision's ImageNet weights per backbone: the ones its detection models start from
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights.IMAGENET1K_V1",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights.IMAGENET1K_V1",
}
# where a backbone's tensors may sit in a checkpoint file: plain torchvision classification
# keys, a tunedet detector, a torchvision detector, a DataParallel wrapper
_BACKBONE_PREFIXES = ("", "backbone.", "backbone.body.", "module.", "module.backbone.")


class PretrainedWeightsError(ValueError):
    """Weights that cannot be found or do not fit; the message names the file."""


def imagenet_weights(arch: str):
    """torchvision's ``WeightsEnum`` entry for ``arch`` (``resnet50`` → ``ResNet50_Weights.IMAGENET1K_V1``)."""
    import torchvision

    if arch not in IMAGENET_WEIGHTS:
        raise PretrainedWeightsError(
            f"backbone init 'imagenet': no ImageNet weights known for '{arch}' "
            f"(known: {', '.join(IMAGENET_WEIGHTS)})"
        )
    enum_name, member = IMAGENET_WEIGHTS[arch].split(".")
    return getattr(getattr(torchvision.models, enum_name), member)


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights: ``<hub dir>/checkpoints/<url file name>``."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_imagenet_state(arch: str) -> dict[str, Tensor]:
    """``arch``'s ImageNet state dict from torch's hub cache, downloaded when missing.

    Offline without the cached file: ``PretrainedWeightsError`` naming the file, the URL
    and the folder where the file is expected.
    """
    weights = imagenet_weights(arch)
    path = imagenet_weights_file(arch)
    if not path.is_file():
        try:
            return weights.get_state_dict(progress=True)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            reason = str(getattr(err, "reason", err)).splitlines()[0]
            raise PretrainedWeightsError(
                f"backbone init 'imagenet': {arch}'s weights {path.name} are not in the cache "
                f"and cannot be downloaded ({reason}); download {weights.url} and put it in "
                f"{path.parent} (torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it)"
            ) from None
    return _read_state(path)


def _read_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a file: a plain one, or the ``model`` / ``state_dict`` entry."""
    try:
        raw = read_weights_file(path)
    except CheckpointError as err:
        raise PretrainedWeightsError(str(err)) from None
    for key in ("model", "state_dict"):
        if isinstance(raw.get(key), dict):
            return raw[key]
    return raw


def backbone_init_state(init: str, arch: str) -> dict[str, Tensor] | None:
    """The state dict that ``init`` (``none`` | ``imagenet`` | a file path) names, or None."""
    if init == "none":
        return None
    if init == "imagenet":
        return fetch_imagenet_state(arch)
    if not Path(init).is_file():
        raise PretrainedWeightsError(
            f"backbone init '{init}': no such file (use none, imagenet or a weights file path)"
        )
    return _read_state(init)


def load_backbone_state(backbone: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy ``state``'s backbone tensors into ``backbone``; every backbone tensor must be there.

    The backbone's keys are looked for under the prefixes of ``_BACKBONE_PREFIXES``;
    extra tensors (``fc``, stages the backbone does not build) are ignored.
    """
    expected = backbone.state_dict()
    needed = [k for k in expected if not k.endswith("num_batches_tracked")]
    prefix = next((p for p in _BACKBONE_PREFIXES if all(p + k in state for k in needed[:1])), None)
    if prefix is None:
        raise PretrainedWeightsError(
            f"backbone init {source}: no '{needed[0]}' under any of the prefixes "
            f"{', '.join(repr(p) for p in _BACKBONE_PREFIXES)} (first key in the file: "
            f"'{next(iter(state), '<empty>')}')"
        )
    missing = [k for k in needed if prefix + k not in state]
    if missing:
        raise PretrainedWeightsError(
            f"backbone init {source}: no weights for '{missing[0]}' ({len(missing)} of "
            f"{len(needed)} backbone tensors missing; weights of another backbone?)"
        )
    picked = {k: state[prefix + k] for k in expected if prefix + k in state}
    for key, value in picked.items():
        if value.shape != expected[key].shape:
            raise PretrainedWeightsError(
                f"backbone init {source}: '{key}' has shape {tuple(value.shape)} in the file "
                f"but {tuple(expected[key].shape)} in the backbone (weights of another backbone?)"
            )
    backbone.load_state_dict(picked, strict=False)


@dataclass
class LoadSummary:
    """What ``load_detector_weights`` did: tensor names per outcome."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: counts and the names of re-initialised, missing and unexpected tensors."""

        def names(keys: list[str]) -> str:
            return ", ".join(keys) if keys else "none"

        reinit = [f"{k} {old}→{new}" for k, old, new in self.reinitialised]
        total = len(self.loaded) + len(self.reinitialised) + len(self.missing)
        return (
            f"load_from {self.source}: loaded {len(self.loaded)}/{total} tensors; "
            f"re-initialised (shape differs): {names(reinit)}; missing: {names(self.missing)}; "
            f"unexpected: {names(self.unexpected)}"
        )


def detector_state(raw: dict, source: str) -> tuple[dict[str, Tensor], str]:
    """The model state dict inside a loaded file, and what it was.

    A tunedet checkpoint (its ``model`` entry), a ``{"state_dict": ...}`` file, a
    torchvision detection state dict (converted) or a plain tunedet state dict.
    """
    kind = "state dict"
    for key in ("model", "state_dict"):
        if isinstance(raw.get(key), dict):
            raw, kind = raw[key], f"'{key}' entry"
            break
    if torchvision_architecture(raw) is not None:
        converted, arch = convert_torchvision_detector(raw)
        return converted, f"torchvision {arch}"
    bad = next((k for k, v in raw.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{source}: '{bad}' is not a tensor; expected a model state dict")
    return raw, kind


def fit_state(model: nn.Module, state: dict[str, Tensor], source: str) -> LoadSummary:
    """Sort ``state``'s tensors into loadable / re-initialised / unexpected, and list the
    model's missing ones.

    A tensor whose shape differs only in its first (output) dimension is re-initialised:
    a predictor of another class or anchor count. Any other shape difference, or a file
    of which no tensor fits, raises ``CheckpointError`` naming the first such key and
    both shapes.
    """
    expected = model.state_dict()
    summary = LoadSummary(source)
    for key, value in state.items():
        if key not in expected:
            summary.unexpected.append(key)
            continue
        want = expected[key]
        if value.shape == want.shape:
            summary.loaded.append(key)
        elif value.dim() == want.dim() and value.dim() > 0 and value.shape[1:] == want.shape[1:]:
            summary.reinitialised.append((key, tuple(value.shape), tuple(want.shape)))
        else:
            raise CheckpointError(
                f"{source} does not fit this model (a checkpoint of another model?): '{key}' "
                f"has shape {tuple(value.shape)} in the checkpoint, {tuple(want.shape)} in the model"
            )
    summary.missing = [k for k in expected if k not in state]
    if not summary.loaded:
        raise CheckpointError(
            f"{source} does not fit this model: none of its {len(state)} tensors has a name "
            f"of the model (first checkpoint key '{next(iter(state), '<empty>')}', first model "
            f"key '{next(iter(expected))}')"
        )
    return summary


def load_detector_weights(
    model: nn.Module, path: str | os.PathLike, log: Callable[[str], None] = print
) -> LoadSummary:
    """Initialise ``model`` from the detector weights in ``path``; logs one summary line."""
    raw = read_weights_file(path)
    state, kind = detector_state(raw, str(path))
    summary = fit_state(model, state, f"{path} ({kind})")
    model.load_state_dict({k: state[k] for k in summary.loaded}, strict=False)
    log(summary.describe())
    return summary


def freeze_parameters(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """``requires_grad = False`` on every parameter matching a pattern; returns their names.

    A pattern is a glob over dotted parameter names (``backbone.layer1.*``) or a module
    name (``backbone.layer1``: everything under it). A pattern matching no parameter is
    an error (a typo, most likely).
    """
    named = dict(model.named_parameters())
    frozen: list[str] = []
    for pattern in patterns:
        hits = [
            name
            for name in named
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")
        ]
        if not hits:
            raise ValueError(
                f"freeze: pattern '{pattern}' matches no parameter of the model "
                f"(names look like '{next(iter(named))}')"
            )
        for name in hits:
            named[name].requires_grad_(False)
        frozen += [name for name in hits if name not in frozen]
    return frozen


def init_detector(
    model: nn.Module,
    load_from: str | None,
    freeze: Iterable[str] = (),
    log: Callable[[str], None] = print,
) -> None:
    """The config's ``load_from`` and ``freeze``, applied to a freshly built detector
    (before the optimizer is built, so frozen parameters stay out of it)."""
    if load_from:
        load_detector_weights(model, load_from, log)
    frozen = freeze_parameters(model, freeze)
    if frozen:
        log(f"freeze: {len(frozen)} parameter tensors frozen ({', '.join(freeze)})")


def skip_backbone_init(spec: dict) -> dict:
    """A model spec (``cfg.model.model_dump()``) with ``backbone.init: none``, for a model
    whose every weight then comes from a checkpoint (eval, infer): no ImageNet file needed."""
    backbone = spec.get("backbone")
    if isinstance(backbone, dict) and backbone.get("init", "none") != "none":
        spec = {**spec, "backbone": {**backbone, "init": "none"}}
    return spec
