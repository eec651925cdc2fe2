"""The class count of an experiment: ``model.num_classes`` from the training data.

``model.num_classes`` may be left out (null): it is then the training set's class
count. An explicit count that differs from the data's is refused before training,
in one line naming both numbers (a count too low fails mid-training with an index
error, one too high trains classes that never occur).

Two steps, both through `resolve_num_classes` / `check_dataset_classes`:

- at config load, from what the config says without reading images: a dataset's
  ``classes`` list, the synthetic set's ``num_classes``; where neither is given and
  the count is needed (``model.num_classes`` unset), the annotation files are read
  for their class names (COCO categories, VOC object names). A validation set
  without ``classes`` takes the training set's listed ones;
- once the datasets are built (the trainer), from their ``classes``: the count and
  the validation set's class names in the same order.
"""

from __future__ import annotations

from typing import Any

from tunedet.config.loader import ConfigError


def listed_class_names(spec: Any) -> list[str] | None:
    """The class names a validated dataset spec states, without reading any file; None
    where only the annotation files say (COCO or VOC without ``classes``)."""
    classes = getattr(spec, "classes", None)
    if classes:
        return list(classes)
    if spec.type == "synthetic":
        from tunedet.data.synthetic import SHAPES

        return list(SHAPES[: spec.num_classes])
    return None


def read_class_names(spec: Any) -> list[str] | None:
    """`listed_class_names`, else the names in the annotation files (COCO categories in
    id order, the sorted VOC object names); None for a dataset type that names none."""
    listed = listed_class_names(spec)
    if listed is not None:
        return listed
    if spec.type == "coco":
        from tunedet.data.coco import coco_class_names

        return coco_class_names(spec.ann_file)
    if spec.type == "voc":
        from tunedet.data.voc import voc_class_names

        return voc_class_names(spec.root, spec.files, spec.exclude, spec.rename)
    return None


def _mismatch(num_classes: int, names: list[str], where: str) -> ConfigError:
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return ConfigError(
        f"model.num_classes is {num_classes} but {where} has {len(names)} classes ({shown}); "
        f"set model.num_classes to {len(names)} or to null (the data's count)"
    )


def _describe(spec: Any) -> str:
    for key in ("ann_file", "root", "img_dir"):
        if getattr(spec, key, None):
            return f"data.train ({spec.type} {getattr(spec, key)})"
    return f"data.train ({spec.type})"


def resolve_num_classes(cfg: Any, source: str = "config") -> None:
    """Fill ``cfg.model.num_classes`` from the training data when unset, or refuse an
    explicit count the config's listed classes contradict; a validation set without
    ``classes`` gets the training set's listed ones. In place, on a validated config."""
    train, val = cfg.data.train, cfg.data.val
    listed = listed_class_names(train)
    if (
        val is not None
        and listed is not None
        and "classes" in type(val).model_fields
        and not val.classes
        and type(train) is type(val)
    ):
        val.classes = list(listed)
    if cfg.model.num_classes is None:
        try:
            names = read_class_names(train)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{source}: model.num_classes is not set and the class names of "
                f"{_describe(train)} cannot be read: {error}"
            ) from None
        if not names:
            raise ConfigError(
                f"{source}: model.num_classes is not set and {_describe(train)} names no "
                "classes; set model.num_classes or the dataset's classes"
            )
        cfg.model.num_classes = len(names)
    elif listed is not None and cfg.model.num_classes != len(listed):
        raise ConfigError(f"{source}: {_mismatch(cfg.model.num_classes, listed, _describe(train))}")


def check_dataset_classes(cfg: Any, train_set: Any, val_set: Any = None) -> None:
    """After the datasets are built: ``model.num_classes`` equals the training set's class
    count, and the validation set has the same class names in the same order."""
    names = getattr(train_set, "classes", None)
    if names is None:
        return
    if cfg.model.num_classes != len(names):
        raise _mismatch(cfg.model.num_classes, list(names), _describe(cfg.data.train))
    val_names = getattr(val_set, "classes", None)
    if val_names is not None and list(val_names) != list(names):
        raise ConfigError(
            f"data.val has classes {list(val_names)[:10]} but data.train has "
            f"{list(names)[:10]}: labels would mean different classes (list the same "
            "classes in both)"
        )
