"""Bad inputs and faults through the ``tunedet`` command line, one subprocess each: exit code,
whether a traceback was printed, and the last line of stderr, as a Markdown table.

    python benchmarks/bad_inputs.py                 # this checkout
    python benchmarks/bad_inputs.py --src OLD/src   # another checkout (before/after tables)

The probes run in one process (the CLI called as a function, as the fuzz tests do), so an
exception the CLI lets through is caught and counted as a traceback.

Probes that can exhaust the machine on an unprotected version (a YAML alias bomb, a
``num_classes`` of 1e8) run only with ``--dangerous``. The table is in docs/BAD_INPUTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
SPACE = "metric: {metric}\nparams:\n  optim.lr: {{float: [0.001, {high}], log: true}}\n"


def coco(tmp: Path, categories: list[dict], image_id: object = 1) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 64), "grey").save(tmp / "a.png")
    ann = {"id": 1, "image_id": image_id, "category_id": categories[-1]["id"],
           "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}  # fmt: skip
    data = {"images": [{"id": image_id, "file_name": "a.png", "width": 64, "height": 64}],
            "annotations": [ann], "categories": categories}  # fmt: skip
    path = tmp / "ann.json"
    path.write_text(json.dumps(data).replace('"IMAGE_ID"', "1e400"))
    return path


def train(*extra: str) -> list[str]:
    return ["train", "retinanet/demo", *TINY, *extra]


def probes(tmp: Path) -> list[tuple[str, list, bool]]:
    """(name, argv, dangerous) of every probe; files are written under ``tmp``. ``argv`` may
    be a list of command lines: the earlier ones set the scene (``["rm", FOLDER]`` puts a
    file in place of a folder), the last one is the probe."""
    out: list[tuple[str, list, bool]] = []

    def add(name: str, argv: list, dangerous: bool = False) -> None:
        out.append((name, argv, dangerous))

    def folder(name: str) -> Path:
        path = tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    f = folder("workdir_file")
    (f / "notes.txt").write_text("the user's file")
    add("--work-dir is a file", train("--work-dir", str(f / "notes.txt")))
    add("--work-dir below a file", train("--work-dir", str(f / "notes.txt" / "run")))
    f = folder("ckpt_file")
    add("a run continued whose checkpoints/ became a file", [
        train("--work-dir", str(f / "run")),
        ["rm", str(f / "run" / "checkpoints")],
        train("--work-dir", str(f / "run"), "train.max_iters=4"),
    ])  # fmt: skip
    add("run dir not writable (sysfs)", train("--work-dir", "/sys/kernel/tunedet_run"))
    f = folder("ann_dir")
    spec = {"type": "coco", "ann_file": str(folder("ann_dir/ann.json")), "img_dir": str(f)}
    add("ann_file is a directory", train(f"data.train={json.dumps(spec)}", "model.num_classes=3"))
    spec = {"type": "coco", "ann_file": str(f / "missing.json"), "img_dir": str(f)}
    add("ann_file missing", train(f"data.train={json.dumps(spec)}", "model.num_classes=3"))
    f = folder("deep_json")
    (f / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    spec = {"type": "coco", "ann_file": str(f / "deep.json"), "img_dir": str(f)}
    add(
        "annotation JSON nested 200k deep",
        train(f"data.train={json.dumps(spec)}", "model.num_classes=3"),
    )
    f = folder("deep_yaml")
    (f / "deep.yaml").write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    add("config YAML nested 50k deep", ["train", str(f / "deep.yaml")])
    f = folder("bomb")
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    (f / "bomb.yaml").write_text("\n".join(lines) + "\n")
    add("YAML alias bomb (~600 bytes)", ["train", str(f / "bomb.yaml")], dangerous=True)
    f = folder("base5")
    (f / "c.yaml").write_text("_base_: 5\n")
    add("_base_: 5", ["train", str(f / "c.yaml")])
    add("device=gpu7", train("device=gpu7"))
    add("device=cuda without a GPU", train("device=cuda"))
    add("model.num_classes=1e8", train("model.num_classes=100000000"), dangerous=True)
    f = folder("dup_cats")
    ann = coco(f, [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}])
    spec = {"type": "coco", "ann_file": str(ann), "img_dir": str(f)}
    add("COCO categories with one id twice", train(f"data.train={json.dumps(spec)}"))
    f = folder("id_1e400")
    ann = coco(f, [{"id": 1, "name": "cat"}], image_id="IMAGE_ID")
    spec = {"type": "coco", "ann_file": str(ann), "img_dir": str(f)}
    add("COCO image id 1e400", train(f"data.train={json.dumps(spec)}"))
    f = folder("tune")
    (f / "bad_metric.yaml").write_text(SPACE.format(metric="AP5O", high=0.1))
    add("tune metric that does not exist", ["tune", "retinanet/demo", str(f / "bad_metric.yaml"),
        *TINY, "--trials", "1", "--out", str(f / "t1")])  # fmt: skip
    import sqlite3

    with sqlite3.connect(f / "other.db") as connection:
        connection.execute("create table studies (x integer)")
    (f / "space.yaml").write_text(SPACE.format(metric="AP50", high=0.1))
    add("tune storage: SQLite of another schema", ["tune", "retinanet/demo", str(f / "space.yaml"),
        *TINY, "--trials", "1", "--storage", f"sqlite:///{f / 'other.db'}", "--out",
        str(f / "t2")])  # fmt: skip
    (f / "garbage.db").write_bytes(b"not a database" * 10)
    add("tune storage: not a database", ["tune", "retinanet/demo", str(f / "space.yaml"),
        *TINY, "--trials", "1", "--storage", f"sqlite:///{f / 'garbage.db'}", "--out",
        str(f / "t3")])  # fmt: skip
    f = folder("ckpt")
    (f / "garbage.pt").write_bytes(os.urandom(4096))
    add("eval with a garbage checkpoint", ["eval", "retinanet/demo", *TINY[4:], "--checkpoint",
        str(f / "garbage.pt")])  # fmt: skip
    add("list box_losses", ["list", "box_losses"])
    add("analyze anchors on yolov3/demo", ["analyze", "anchors", "yolov3/demo", "--max-images",
        "8", "--out", str(folder("anchors"))])  # fmt: skip
    add("analyze anchors on ssd/demo", ["analyze", "anchors", "ssd/demo", "--max-images", "8",
        "--out", str(folder("anchors"))])  # fmt: skip
    add("analyze assign on yolov3/demo", ["analyze", "assign", "yolov3/demo", "--num-images",
        "1", "--out", str(folder("assign") / "a.png")])  # fmt: skip
    add("analyze flops, ssd300 at 64x64", ["analyze", "flops", "ssd/ssd300_vgg16", "--size", "64",
        "64", "--out", str(folder("flops") / "f.png")])  # fmt: skip
    return out


def run_probe(argv: list[str]) -> dict:
    """Run ``tunedet ARGV`` in this process (``tunedet`` from ``sys.path``): exit code, a
    traceback (an exception the CLI let through), the last line of stderr."""
    import contextlib
    import io
    import traceback

    from tunedet.cli.main import main as cli

    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli(argv)
        except SystemExit as stop:
            rc = stop.code
        except BaseException as error:  # noqa: BLE001 - what the user would see
            rc = 1
            traceback.print_exception(error, file=err)
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return {
        "rc": rc,
        "traceback": "Traceback" in text,
        "line": line if len(line) <= 170 else line[:167] + "...",
        "s": time.monotonic() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--dangerous", action="store_true", help="also the memory/time bombs")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inner:  # the probes run in a process that imports tunedet from --src
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(args.src).resolve()),
            "CUDA_VISIBLE_DEVICES": "",
        }
        inner = [sys.executable, __file__, "--inner", *(["--dangerous"] if args.dangerous else [])]
        return subprocess.run(inner, env=env).returncode
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.chdir(tmp)
        rows, tracebacks = [], 0
        for name, argv, dangerous in probes(tmp):
            if dangerous and not args.dangerous:
                rows.append(f"| {name} | not run | | (--dangerous) |")
                continue
            *setup, argv = argv if isinstance(argv[0], list) else [argv]
            for step in setup:  # earlier commands of the probe (their outcome not shown)
                if step[0] == "rm":  # a folder replaced by a file
                    shutil.rmtree(step[1])
                    Path(step[1]).write_text("not a folder")
                else:
                    run_probe(step)
            r = run_probe(argv)
            tracebacks += r["traceback"]
            shown = r["line"].replace("|", "\\|").replace(folder, "TMP")
            rows.append(f"| {name} | {r['rc']} | {'yes' if r['traceback'] else 'no'} | {shown} |")
            print(rows[-1], file=sys.stderr, flush=True)
    import tunedet

    print(f"source: {Path(tunedet.__file__).parent}\n")
    print("| probe | exit code | traceback | last line of stderr |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntracebacks: {tracebacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
