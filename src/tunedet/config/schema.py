"""The typed config schema.

Component sections (``model.assigner``, ``optim``, ``data.train`` ...) are
generated from the registered constructors' signatures, so a component's
parameters are declared exactly once. Fixed sections (``train``, ``data``,
``eval``) are written here. Every model forbids unknown keys.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from tunedet.config.registry import REGISTRIES

STRICT = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)


class Section(BaseModel):
    model_config = STRICT


def import_components() -> None:
    """Import every package that registers components (registration happens on import)."""
    import tunedet.anchors  # noqa: F401
    import tunedet.assigners  # noqa: F401
    import tunedet.boxes  # noqa: F401
    import tunedet.data  # noqa: F401
    import tunedet.engine  # noqa: F401
    import tunedet.losses  # noqa: F401
    import tunedet.models  # noqa: F401
    import tunedet.samplers  # noqa: F401


def _signature_fields(target: Any, skip: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    init = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(init, include_extras=True)
    fields: dict[str, tuple[Any, Any]] = {}
    for name, param in inspect.signature(init).parameters.items():
        if name in ("self", "args", "kwargs") or name in skip:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (annotation, default)
    return fields


# More classes than any detection vocabulary (LVIS 1203, V3Det 13204): a typo such as
# 1e8 would otherwise allocate a classifier of hundreds of GB before failing.
MAX_NUM_CLASSES = 100_000
NumClasses = Annotated[int, Field(ge=1, le=MAX_NUM_CLASSES)]


@functools.cache
def component_model(kind: str, name: str) -> type[BaseModel]:
    """The pydantic model of one registered component, generated from its signature."""
    entry = REGISTRIES[kind].get(name)
    component_slots = [arg for arg in entry.injected if arg in REGISTRIES]
    fields = _signature_fields(entry.target, skip=entry.injected)
    if kind == "detector" and "num_classes" in fields:
        # optional: taken from the training data when left out (data/classes.py)
        fields["num_classes"] = (NumClasses | None, None)
    for slot in component_slots:
        defaults = getattr(entry.target, "default_components", {})
        default = defaults.get(slot, ...)
        fields[slot] = (component_union(slot), default)
    model_name = "".join(part.capitalize() for part in f"{name}_{kind}".split("_"))
    defaults = getattr(entry.target, "default_components", {})
    model = create_model(
        model_name,
        __config__=STRICT,
        __doc__=entry.description,
        __validators__={"_fill_default_types": _default_type_filler(defaults)},
        type=(Literal[name], name),
        **fields,
    )
    model.registry_kind = kind  # read by the error messages ("unknown assigner 'atts'")
    return model


def _default_type_filler(defaults: dict[str, dict[str, Any]]) -> Any:
    """A before-validator: a component slot given without ``type`` (a dotted override
    such as ``model.roi_head.cls_loss.label_smoothing=0.2`` into a default component) is
    that default component with the given keys on top."""

    def fill(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for slot, default in defaults.items():
            given = filled.get(slot)
            if isinstance(given, dict) and "type" not in given:
                filled[slot] = {**default, **given}
        return filled

    return model_validator(mode="before")(fill)


@functools.cache
def component_union(kind: str) -> Any:
    """A discriminated union over every registered component of ``kind``."""
    members = tuple(component_model(kind, name) for name in REGISTRIES[kind].names())
    if not members:
        raise RuntimeError(f"no component of kind '{kind}' is registered")
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007


def check_device(name: str) -> str:
    """A ``device`` value this machine has: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    import torch

    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"not a device: {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name!r}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name!r}: MPS is not available on this machine (use auto or cpu)")
    elif device.type != "cpu":
        raise ValueError(f"{name!r}: not supported (use auto, cpu, cuda, cuda:N or mps)")
    return name


Device = Annotated[str, AfterValidator(check_device)]


class SamplerConfig(Section):
    """Training batch order (data/samplers.py `EpochBatchSampler`): shuffled per epoch;
    ``aspect_grouping``: batches of only wide or only tall images (Detectron);
    ``repeat_threshold``: LVIS repeat-factor sampling, ``r = max(1, sqrt(t / f_c))``."""

    shuffle: bool = True
    aspect_grouping: bool = False
    repeat_threshold: Annotated[float, Field(gt=0, le=1)] | None = None


class DataConfig(Section):
    train: Any
    val: Any | None = None
    train_transforms: list[Any] = Field(default_factory=list)
    val_transforms: list[Any] = Field(default_factory=list)
    batch_size: Annotated[int, Field(ge=1)] = 8
    val_batch_size: Annotated[int, Field(ge=1)] | None = None
    num_workers: Annotated[int, Field(ge=0)] = 0
    size_divisor: Annotated[int, Field(ge=1)] = 32
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)


class ScheduleConfig(Section):
    warmup: Any = None
    policy: Any = None
    # Detectron's SCALE_MOMENTUM: momentum velocity rescaled only on lr changes by a ratio
    # above the threshold (torch's SGD otherwise does it on every change); see
    # engine/lr_schedule.py MomentumCorrection.
    scale_momentum: bool = False
    scale_momentum_threshold: Annotated[float, Field(ge=1)] = 1.1


class EMAConfig(Section):
    """EMA of the weights, used for evaluation: decay·(1 − exp(−updates/tau)) per step."""

    decay: Annotated[float, Field(gt=0, lt=1)] = 0.9998
    tau: Annotated[float, Field(gt=0)] = 2000.0


class EarlyStopConfig(Section):
    """Stop after ``patience`` evaluations without an improvement of ``metric``."""

    metric: str = "AP50"
    patience: Annotated[int, Field(ge=1)] = 5
    mode: Literal["max", "min"] = "max"
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class DistillConfig(Section):
    """Distil a teacher detector's classification outputs into the student."""

    teacher_config: str
    teacher_checkpoint: str
    temperature: Annotated[float, Field(gt=0)] = 1.0
    weight: Annotated[float, Field(ge=0)] = 1.0
    form: Literal["sigmoid", "softmax"] = "sigmoid"


class TrainConfig(Section):
    max_iters: Annotated[int, Field(ge=1)] | None = None
    epochs: Annotated[int, Field(ge=1)] | None = None
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    eval_every: Annotated[int, Field(ge=0)] = 0
    ckpt_every: Annotated[int, Field(ge=0)] = 500
    keep_checkpoints: Annotated[int, Field(ge=1)] = 3
    log_every: Annotated[int, Field(ge=1)] = 20
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    resume: bool = True
    progress: bool = True
    accumulate: Annotated[int, Field(ge=1)] = 1
    # mixed precision (engine/amp.py): auto = bf16 where the device has native bf16 and
    # the detector type was measured to keep its AP in it (docs/PERFORMANCE.md), else fp32
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    # torch.compile of the loss computation (model + loss; the first steps compile)
    compile: bool = False
    # NHWC memory order for the model and the training batches (torch.channels_last):
    # oneDNN's depthwise and BN kernels prefer it (SSD-lite trains faster on CPU; see
    # docs/PERFORMANCE.md); checkpoints are the same either way
    channels_last: bool = False
    # torchrun runs only: BatchNorm → SyncBatchNorm (statistics over the global batch; CUDA)
    sync_bn: bool = False
    ema: EMAConfig | None = None
    early_stop: EarlyStopConfig | None = None
    distill: DistillConfig | None = None
    log_lr_change: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.max_iters is None and self.epochs is None and self.max_minutes is None:
            raise ValueError("set one of train.max_iters, train.epochs or train.max_minutes")
        if self.max_iters is not None and self.epochs is not None:
            raise ValueError("set train.max_iters or train.epochs, not both")
        if self.early_stop is not None and not self.eval_every:
            raise ValueError("train.early_stop counts evaluations: set train.eval_every > 0")
        return self


class SlicedConfig(Section):
    """Sliced inference (engine/sliced_inference.py): the detector runs on ``tile``-px
    tiles overlapping by ``overlap`` and the tile detections are merged across tiles
    (``merge: nms`` suppresses, ``nmm`` merges matched boxes into their union) where
    ``match_metric`` (IoU, or IoS = intersection / smaller area) >= ``match_thr``."""

    tile: Annotated[int, Field(ge=16)] = 512
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25
    merge: Literal["nms", "nmm"] = "nmm"
    match_metric: Literal["iou", "ios"] = "ios"
    match_thr: Annotated[float, Field(gt=0, le=1)] = 0.5
    batch_size: Annotated[int, Field(ge=1)] = 8
    max_dets: Annotated[int, Field(ge=1)] = 300


class TTAConfig(Section):
    """Test-time augmentation (engine/test_time_augmentation.py): the detector also runs
    on the image's ``flips`` (``h``, ``v``, ``hv``; may be empty) and at each of ``scales``
    (the image resized by that factor; ``[1.0]``: the image as it is), and the passes are
    merged by class-wise NMS at ``iou_thr`` (``merge: nms``), by NMS with each kept box's
    score replaced by the mean over passes of its best match's score (``merge: vote``), or
    by weighted boxes fusion (Solovyev et al. 2019; ``merge: wbf``)."""

    flips: list[Literal["h", "v", "hv"]] = ["h"]
    scales: Annotated[list[Annotated[float, Field(gt=0, le=8)]], Field(min_length=1)] = [1.0]
    merge: Literal["nms", "vote", "wbf"] = "vote"
    iou_thr: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_dets: Annotated[int, Field(ge=1)] = 300

    @model_validator(mode="after")
    def _distinct_passes(self) -> TTAConfig:
        if len(set(self.flips)) != len(self.flips):
            raise ValueError(f"eval.tta.flips repeats a flip: {self.flips}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"eval.tta.scales repeats a scale: {self.scales}")
        if not self.flips and self.scales == [1.0]:
            raise ValueError("eval.tta: no pass besides the image itself (set flips or scales)")
        return self


class EvalConfig(Section):
    metric: Literal["coco", "voc07", "voc12"] = "coco"
    # the validation metric best.pt is chosen by (higher is better); None: AP (coco), mAP (voc)
    best_metric: str | None = None
    score_thr: Annotated[float, Field(ge=0, le=1)] | None = None
    sliced: SlicedConfig | None = None
    tta: TTAConfig | None = None


@functools.cache
def root_model() -> type[BaseModel]:
    """The whole experiment's schema (built once all components are registered)."""
    import_components()
    data = create_model(
        "DataConfig",
        __base__=DataConfig,
        train=(component_union("dataset"), ...),
        val=(component_union("dataset") | None, None),
        train_transforms=(list[component_union("transform")], Field(default_factory=list)),
        val_transforms=(list[component_union("transform")], Field(default_factory=list)),
    )
    schedule = create_model(
        "ScheduleConfig",
        __base__=ScheduleConfig,
        warmup=(component_union("warmup"), {"type": "linear"}),
        policy=(component_union("lr_policy"), {"type": "cosine"}),
    )
    return create_model(
        "Config",
        __config__=STRICT,
        __doc__="One experiment.",
        seed=(int, 0),
        deterministic=(bool, False),
        device=(Device, "auto"),
        threads=(Annotated[int, Field(ge=1)] | None, None),
        work_dir=(str | None, None),
        model=(component_union("detector"), ...),
        # whole-detector init (mmdetection's load_from, Detectron's TRAIN.WEIGHTS):
        # a tunedet checkpoint or a torchvision detection state dict (models/pretrained.py)
        load_from=(str | None, None),
        # parameters to freeze: globs over names ("backbone.layer1.*") or module names
        freeze=(list[str], Field(default_factory=list)),
        data=(data, ...),
        optim=(component_union("optimizer"), {"type": "sgd"}),
        schedule=(schedule, Field(default_factory=lambda: schedule())),
        train=(TrainConfig, ...),
        eval=(EvalConfig, Field(default_factory=EvalConfig)),
    )
