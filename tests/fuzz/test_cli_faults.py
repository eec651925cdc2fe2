"""Faults a careless or hostile user meets the CLI with, each a named case: the command
ends with exit code 2 and one line ``tunedet CMD: error: ...`` naming the file or key, never
a traceback, and (where the fault is in the run directory) before any training.

Listed with the result before and after in docs/BAD_INPUTS.md. Most run in-process and
stop before a model is built, so the file takes seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from tunedet.cli import main as cli
from tunedet.cli.main import MAX_MESSAGE, main

TINY = [
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=4",
    "data.train.image_size=64",
    "data.val.num_images=2",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.max_iters=2",
    "threads=1",
]


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def assert_one_line(code: int, err: str, command: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"tunedet {command}: error: "), err
    assert len(lines[0]) <= MAX_MESSAGE + len(f"tunedet {command}: error: "), len(lines[0])
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ------------------------------------------------------------------ the run directory


def test_work_dir_that_is_a_file(tmp_path: Path):
    target = tmp_path / "notes.txt"
    target.write_text("the user's file")
    code, err = run(["train", "retinanet/demo", *TINY, "--work-dir", str(target)])
    assert_one_line(code, err, "train", str(target), "is a file")
    assert target.read_text() == "the user's file"


def test_work_dir_below_a_file(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    code, err = run(["train", "retinanet/demo", *TINY, "--work-dir", str(tmp_path / "file/run")])
    assert_one_line(code, err, "train", "is a file")


def test_checkpoints_that_is_a_file_is_refused_before_training(tmp_path: Path):
    """A run continued in its folder, whose ``checkpoints`` became a file: refused before
    the first iteration (it used to fail at the first save, losing the training)."""
    import shutil

    run_dir = tmp_path / "run"
    assert run(["train", "retinanet/demo", *TINY, "--work-dir", str(run_dir)])[0] == 0
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").write_text("not a folder")
    log = (run_dir / "metrics.jsonl").read_text()
    longer = [*TINY, "train.max_iters=4"]  # the same run, extended: it continues there
    code, err = run(["train", "retinanet/demo", *longer, "--work-dir", str(run_dir)])
    assert_one_line(code, err, "train", "checkpoints", "is a file")
    assert (run_dir / "metrics.jsonl").read_text() == log  # nothing trained


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: a read-only folder, or (as root,
    whom permissions do not stop) sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if Path("/sys/kernel").is_dir():
        return Path("/sys/kernel")
    pytest.skip("running as root without sysfs: no folder refuses writes")


def test_read_only_run_dir(tmp_path: Path):
    parent = _unwritable(tmp_path)
    code, err = run(["train", "retinanet/demo", *TINY, "--work-dir", str(parent / "run")])
    assert_one_line(code, err, "train", str(parent))


def test_ann_file_that_is_a_directory(tmp_path: Path):
    folder = tmp_path / "annotations.json"
    folder.mkdir()
    spec = json.dumps({"type": "coco", "ann_file": str(folder), "img_dir": str(tmp_path)})
    code, err = run(["train", "retinanet/demo", *TINY, "model.num_classes=3", f"data.train={spec}"])
    assert_one_line(code, err, "train", f"{folder}: cannot read")


def test_deeply_nested_json_annotation_file(tmp_path: Path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    spec = json.dumps({"type": "coco", "ann_file": str(path), "img_dir": str(tmp_path)})
    code, err = run(["train", "retinanet/demo", *TINY, "model.num_classes=3", f"data.train={spec}"])
    assert_one_line(code, err, "train", str(path))


def test_deeply_nested_yaml_config(tmp_path: Path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, err = run(["train", str(path), "--work-dir", str(tmp_path / "run")])
    assert_one_line(code, err, "train")


@pytest.mark.parametrize("metric", ["coco", "voc07", "voc12"])
def test_nan_or_infinite_scores_are_refused_naming_the_file(metric: str, tmp_path: Path):
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                         "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    for bad in ("NaN", "Infinity"):
        dets = tmp_path / "dets.json"
        det = '{"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "score": SCORE}'
        dets.write_text(f"[{det.replace('SCORE', bad)}]")
        code, err = run(
            ["evaluate", "--gt", str(tmp_path / "gt.json"), "--dets", str(dets), "--metric", metric]
        )
        assert_one_line(code, err, "evaluate", str(dets), "non-finite")


# ------------------------------------------------------------------ the error wrapper


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (RecursionError("maximum recursion depth exceeded"), ("nested too deeply",)),
        (MemoryError(), ("out of memory",)),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                         "allocate memory: you tried to allocate 230000000000 bytes."),
            ("out of memory", "230000000000 bytes"),
        ),
        (PermissionError(13, "Permission denied", "/data/x.json"), ("/data/x.json: Permission",)),
        (IsADirectoryError(21, "Is a directory", "ann"), ("ann: Is a directory",)),
        (OSError(28, "No space left on device", "runs/x/ckpt.pt"), ("No space left",)),
        (ValueError("x" * 10_000_000), ("...",)),
        (ValueError("first line\nsecond line"), ("first line",)),
    ],
    ids=["recursion", "memory", "torch-alloc", "permission", "is-a-dir", "disk-full",
         "huge-message", "two-lines"],
)  # fmt: skip
def test_expected_errors_become_one_line(error, words, monkeypatch):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_list", fail)
    code, err = run(["list"])
    assert_one_line(code, err, "list", *words)


def test_a_bug_still_shows_its_traceback(monkeypatch):
    """An unexpected error (a bug) is not dressed up as bad input."""

    def fail(args):
        raise RuntimeError("shape mismatch in a head")

    monkeypatch.setattr(cli, "cmd_list", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["list"])
