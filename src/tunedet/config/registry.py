"""Name → class registries: the only indirection between a config and the code.

A component is registered next to its definition::

    @register("assigner", "max_iou")
    class MaxIoUAssigner:
        def __init__(self, pos_iou_thr: float = 0.5, ...): ...

The constructor's signature is the single source of truth for the component's
parameters: the config schema is generated from its type hints and defaults
(``config/schema.py``). Arguments that the builder supplies from other
components (a head's ``in_channels``, a loss's ``num_classes``) are declared as
``injected`` and do not appear in the config.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "detector",
    "backbone",
    "neck",
    "head",
    "rpn",
    "roi_head",
    "mask_head",
    "anchor_generator",
    "assigner",
    "sampler",
    "box_coder",
    "cls_loss",
    "box_loss",
    "dataset",
    "transform",
    "optimizer",
    "lr_policy",
    "warmup",
)


@dataclass
class Entry:
    name: str
    target: Callable[..., Any]
    injected: tuple[str, ...] = ()
    description: str = ""


@dataclass
class Registry:
    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, name: str, target: Callable[..., Any], injected: tuple[str, ...] = ()) -> None:
        if name in self.entries:
            raise KeyError(f"{self.kind} '{name}' is registered twice")
        doc = inspect.getdoc(target) or ""
        self.entries[name] = Entry(name, target, tuple(injected), doc.split("\n", 1)[0])

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise KeyError(unknown_name_message(self.kind, name, list(self.entries)))
        return self.entries[name]

    def names(self) -> list[str]:
        return sorted(self.entries)


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}


def register(kind: str, name: str, injected: tuple[str, ...] = ()):
    """Class/function decorator adding ``target`` to the registry of ``kind`` under ``name``."""
    if kind not in REGISTRIES:
        raise KeyError(f"unknown registry kind '{kind}'; kinds: {', '.join(KINDS)}")

    def decorator(target):
        REGISTRIES[kind].add(name, target, injected)
        return target

    return decorator


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (choices: {', '.join(sorted(choices))})"


def build(kind: str, spec: dict[str, Any] | Any, **injected: Any) -> Any:
    """Instantiate a component from a validated spec (``{"type": name, **params}``).

    ``spec`` may be a pydantic model produced by the schema or a plain dict.
    """
    params = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    entry = REGISTRIES[kind].get(params.pop("type"))
    extra = {k: v for k, v in injected.items() if k in entry.injected}
    return entry.target(**params, **extra)
