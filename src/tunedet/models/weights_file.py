"""Reading a weights file safely: ``torch.load(weights_only=True)`` with one-line errors.

A checkpoint or a pretrained state dict holds only tensors and plain containers; a
file that asks to unpickle anything else is refused. Every failure is a
``CheckpointError`` whose one-line message names the file and the reason. The engine's
checkpoints (``engine/checkpoint.py``) and the models' pretrained weights
(``models/pretrained.py``) both read through here.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def read_weights_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict a torch file holds, loaded with ``torch.load(weights_only=True)``.

    Raises ``CheckpointError`` (one line naming the file) when the file is missing,
    truncated or corrupt, or holds pickled objects that weights-only loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if unsupported:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled object ({unsupported.group(1)}) that safe "
                "loading (weights_only=True) refuses; save only tensors and plain containers"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        reason = first_line(detail.group(1)) if detail else "unreadable pickle data"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({reason})"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = first_line(str(err)).split(". ")[0] or type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, expected a dict of state"
        )
    return state
