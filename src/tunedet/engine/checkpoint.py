"""Atomic checkpoints, safe loading, and the RNG state needed for a bit-exact resume.

Layout of a run: ``<run_dir>/checkpoints/iter_0001000.pt``. Besides the training state
a checkpoint carries what using it needs without the config file: ``"config"`` (the
resolved config as a plain dict), ``"class_names"`` (list of str) and ``"run_id"`` (the
identity of the run that wrote it). A file is written to a
temporary name in the same folder, fsynced, then renamed over the target, so a
crash leaves either the old file or the new one, never half of one. Loading uses
``torch.load(weights_only=True)``: a checkpoint holds only tensors and plain
containers, and a file that asks to unpickle anything else is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel
from torch import nn

# one safe reader for checkpoints and pretrained weights (below the models that use it)
from tunedet.models.weights_file import CheckpointError, read_weights_file

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")


def checkpoint_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    """``<run_dir>/checkpoints/iter_{iteration:07d}.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"iter_{iteration:07d}.pt"


def new_run_id() -> str:
    """A fresh run identity (12 hex digits), stored in every checkpoint of the run."""
    return uuid.uuid4().hex[:12]


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The resolved config as a plain dict (str keys; lists, numbers, str, None), the form
    a checkpoint's ``"config"`` entry takes."""
    return yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def checkpoint_config(state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> dict:
    """The resolved config stored in a checkpoint's ``"config"`` entry, as a plain dict
    (checkpoints of earlier versions stored its YAML text); ``CheckpointError`` naming
    ``path`` when the checkpoint carries none."""
    config = state.get("config")
    if isinstance(config, str):
        config = yaml.safe_load(config)
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} carries no config (a checkpoint not written by tunedet train?): "
            "give the config file"
        )
    return config


def checkpoint_class_names(state: dict[str, Any]) -> list[str] | None:
    """The class names stored in a checkpoint (``"class_names"``; ``"classes"`` in
    checkpoints of earlier versions), or None."""
    names = state.get("class_names", state.get("classes"))
    return [str(name) for name in names] if isinstance(names, list) else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, flush, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            reason = _first_line(str(err)) or type(err).__name__
            raise CheckpointError(
                f"could not write checkpoint {path}: {reason} "
                f"({free_mb:.0f} MB free in {path.parent})"
            ) from err
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``.

    Raises ``CheckpointError`` (one line naming the file) when the file is missing,
    truncated or corrupt (every entry's CRC-32 in the zip archive is checked first, so a
    flipped bit is caught before the weights are used), or holds pickled objects that
    weights-only loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _verify_checksums(path)
    return read_weights_file(path, map_location)


def _verify_checksums(path: Path) -> None:
    """``CheckpointError`` when an entry of the checkpoint's zip archive fails its CRC-32
    (``torch.save`` records one per entry). Files of the legacy non-zip format pass."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        reason = _first_line(str(err)) or type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (CRC-32 mismatch in entry {bad})")


def _looks_complete(path: Path) -> bool:
    """A zip archive (a torch file's directory sits at its end) whose entries all match
    their CRC-32."""
    try:
        _verify_checksums(path)
        return zipfile.is_zipfile(path)
    except (CheckpointError, OSError):
        return False


def checkpoint_run_id(path: str | os.PathLike) -> str | None:
    """The ``"run_id"`` stored in a checkpoint, or None (none stored, or unreadable).
    Memory-maps the file: the tensors are not read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (
        pickle.UnpicklingError,
        EOFError,
        RuntimeError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
    ):
        return None
    run_id = state.get("run_id") if isinstance(state, dict) else None
    return str(run_id) if run_id is not None else None


def link_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make ``target`` (``last.pt``, ``best.pt``) hold ``source``'s checkpoint: a hard
    link (no second write; a copy where the file system has none) made under a temporary
    name and renamed over ``target``, so ``target`` is always whole."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{new_run_id()}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = _first_line(str(err)) or type(err).__name__
        raise CheckpointError(f"could not write checkpoint {target}: {reason}") from err
    _fsync_dir(target.parent)
    return target


def _checkpoint_files(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the ``iter_*.pt`` files in ``folder`` or in
    ``folder/checkpoints`` (so both a run dir and its checkpoint dir work), sorted."""
    folder = Path(folder)
    if not any(_NAME.match(f.name) for f in folder.glob("iter_*.pt")):
        folder = folder / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in folder.iterdir() if (m := _NAME.match(f.name))]
    return sorted(f for f in found if f[1].is_file())


def checkpoints_newest_first(run_dir: str | os.PathLike) -> list[Path]:
    """Every ``iter_*.pt`` file of a run (valid or not), the highest iteration first."""
    return [file for _, file in reversed(_checkpoint_files(run_dir))]


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that never finished (a process killed while
    writing); returns them. Call only when no save is in progress."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [f for f in folder.glob(".*.pt.*.tmp") if f.is_file()]
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-iteration complete checkpoint of a run, or None.

    ``run_dir`` may be the run folder or its ``checkpoints`` folder.
    """
    for _, file in reversed(_checkpoint_files(run_dir)):
        if _looks_complete(file):
            return file
    return None


def prune_checkpoints(
    run_dir: str | os.PathLike, keep: int, run_id: str | None = None
) -> list[Path]:
    """Delete all but the ``keep`` highest-iteration checkpoints; returns the deleted paths.

    With ``run_id`` only checkpoints of that run are counted and deleted: a file of
    another run, or one whose run cannot be read, is never touched.
    """
    if keep < 1:
        return []
    files = _checkpoint_files(run_dir)
    if run_id is not None:
        files = [(it, file) for it, file in files if checkpoint_run_id(file) == run_id]
    removed = [file for _, file in files[:-keep]]
    for file in removed:
        file.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Python ``random``, numpy's global and torch's CPU (and CUDA) generator states.

    Stored as tensors, ints, floats and strings so ``torch.load(weights_only=True)``
    accepts it.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].cpu().numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


# ------------------------------------------------------------------------- model


def load_model_state(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike | None = None
) -> None:
    """``model.load_state_dict(state_dict)`` with a one-line error for a checkpoint of another model.

    Names the first missing key, the first unexpected key, or the first shape
    mismatch with both shapes; ``source`` (the file) is named when given.
    """
    expected = model.state_dict()
    where = f" from {source}" if source is not None else ""
    problems: list[str] = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"missing key '{missing[0]}'{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        problems.append(f"unexpected key '{unexpected[0]}'{more}")
    for key, value in expected.items():
        loaded = state_dict.get(key)
        if isinstance(loaded, torch.Tensor) and loaded.shape != value.shape:
            problems.append(
                f"shape mismatch for '{key}': checkpoint {tuple(loaded.shape)} "
                f"vs model {tuple(value.shape)}"
            )
            break
    if problems:
        raise CheckpointError(
            f"model state{where} does not fit this model (a checkpoint from another model?): "
            + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
