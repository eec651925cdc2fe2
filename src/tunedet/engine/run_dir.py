"""Choosing a run's directory so that runs never overwrite each other.

A run directory is marked as tunedet's by its ``config.yaml``, whose first line names
the run (``# tunedet run <run_id>``). A new run in ``runs/demo``:

- continues the run there when it holds a run of the same resolved config (the keys in
  ``NOT_IDENTITY`` aside: where it runs, how long, how it prints);
- starts there when the folder does not exist or is empty;
- otherwise tries ``runs/demo2``, ``runs/demo3``, ... the same way (the ultralytics
  naming; ``seed1_2``, ``seed1_3`` after a name ending in a digit), so a run of another config, or a folder of the user's own files, is never
  written into.

With an explicit resume (``tunedet train --resume``) the folder must hold a run of the
same config: a different one is refused with the keys that differ.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"
_HEADER = re.compile(r"^# tunedet run ([0-9a-f]+)\b")

# Keys that may change between a run and its continuation: where and on what it runs,
# how it prints, and its length (a longer max_iters extends the run).
NOT_IDENTITY = (
    "work_dir",
    "device",
    "threads",
    "data.num_workers",
    "train.resume",
    "train.progress",
    "train.max_iters",
    "train.epochs",
    "train.max_minutes",
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names it and why."""


@dataclass(frozen=True)
class RunDirectory:
    """Where a run goes: ``path``; ``resume`` when it holds a run of this config to
    continue; ``note`` says why it is not the folder asked for (None when it is)."""

    path: Path
    resume: bool
    note: str | None = None


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.max_iters": 40, ...}``: nested dicts as dotted keys (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_differences(saved: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for each dotted key whose value differs (a key missing on one
    side reads ``<unset>``), the keys in ``NOT_IDENTITY`` left out; sorted."""
    old_flat, new_flat = flatten(saved), flatten(new)
    ignored = tuple(f"{key}." for key in NOT_IDENTITY)
    lines = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if key in NOT_IDENTITY or key.startswith(ignored):
            continue
        old, value = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        if old != value:
            lines.append(f"{key}: {old} -> {value}")
    return lines


def saved_run_config(folder: str | os.PathLike) -> dict | None:
    """The resolved config of the run in ``folder`` (its ``config.yaml``, written by
    ``write_run_config``), or None when the folder holds no tunedet run: no
    ``config.yaml``, or one that tunedet did not write (the user's own file)."""
    path = Path(folder) / CONFIG_FILE
    try:
        with path.open(encoding="utf-8") as f:
            if not _HEADER.match(f.readline()):
                return None
            f.seek(0)
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def saved_run_id(folder: str | os.PathLike) -> str | None:
    """The run identity in the first line of ``folder/config.yaml``, or None."""
    try:
        with (Path(folder) / CONFIG_FILE).open(encoding="utf-8") as f:
            match = _HEADER.match(f.readline())
    except (OSError, UnicodeDecodeError):
        return None
    return match.group(1) if match else None


def write_run_config(folder: str | os.PathLike, config_yaml: str, run_id: str) -> Path:
    """Write ``folder/config.yaml``: a first line naming the run, then the resolved config.

    Refuses (``RunDirError``) to replace a ``config.yaml`` that tunedet did not write or
    that belongs to another run. Written to a temporary file and renamed into place.
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if path.exists() and saved_run_id(folder) != run_id:
        raise RunDirError(
            f"{path} belongs to another run or is not tunedet's: not overwriting it "
            "(choose another --work-dir)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CONFIG_FILE}.{run_id}.tmp"
    tmp.write_text(
        f"# tunedet run {run_id}: the resolved config (loading it alone reproduces the run)\n"
        + config_yaml,
        encoding="utf-8",
    )
    os.replace(tmp, path)
    return path


def numbered_path(path: Path, number: int) -> Path:
    """``runs/demo`` → ``runs/demo2``; a name ending in a digit takes ``_``: ``trial_3_2``."""
    if number == 1:
        return path
    sep = "_" if path.name[-1:].isdigit() else ""
    return path.with_name(f"{path.name}{sep}{number}")


def choose_run_dir(
    requested: str | os.PathLike,
    config: dict,
    resume: bool = True,
    must_resume: bool = False,
) -> RunDirectory:
    """The directory a run of the resolved ``config`` (a plain dict) goes to.

    ``resume``: continue a run of the same config found in ``requested`` or one of its
    numbered siblings (``train.resume``); False always starts a fresh directory.
    ``must_resume``: the run in ``requested`` itself must be continued; ``RunDirError``
    when it holds none, or a run of another config (the message lists the keys).
    """
    requested = Path(requested)
    if must_resume:
        saved = saved_run_config(requested)
        if saved is None:
            raise RunDirError(f"nothing to resume: {requested} holds no tunedet run")
        differences = config_differences(saved, config)
        if differences:
            shown = "; ".join(differences[:6])
            more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
            raise RunDirError(
                f"cannot resume {requested}: its run has another config ({shown}{more}); "
                "drop --resume to start a new run in a numbered directory"
            )
        return RunDirectory(requested, resume=True)
    number = 1
    while True:
        path = numbered_path(requested, number)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            break
        saved = saved_run_config(path) if path.is_dir() else None
        if resume and saved is not None and not config_differences(saved, config):
            break
        number += 1
    if path == requested:
        return RunDirectory(path, resume=resume and path.exists())
    why = _why_not(requested, config)
    return RunDirectory(path, resume=resume and path.exists(), note=f"{requested} {why}")


def _why_not(requested: Path, config: dict) -> str:
    if not requested.is_dir():
        return "is not a folder"
    saved = saved_run_config(requested)
    if saved is None:
        return "holds files of something other than a tunedet run"
    differences = config_differences(saved, config)
    if not differences:
        return "holds a run of this config (train.resume=false starts a new one)"
    more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
    return f"holds a run of another config ({differences[0]}{more})"
