"""What would a finished ``tunedet fit`` run have scored with one knob of its recipe changed?

For each suite dataset and seed whose fit run ``benchmarks/fit_table.py`` kept
(``WORK/NAME/SEED/fit``), train the run's ``recipe.yaml`` again with one change, for the
same iterations on the same images, and score it on the test split as the table does:

- ``none``: the recipe unchanged (the reference: the recipe's schedule is sized in
  iterations, the final run's in time, so the two differ a little);
- ``lr=K``: the base LR times K;
- ``scale=K``: the input scale (the resize factor of training and evaluation) times K;
- ``tta=h,v,hv``: flip TTA at evaluation (no training: the fit run's own checkpoint);
- ``iters=K``: the recipe's iterations times K (the schedule stretched with them);
- ``data=train``: trained on fit's training part only (the held-out images left out, as
  fit's search trials train), instead of the recipe's images.

Changes combine with ``+`` (``iters=1.5+data=train``).

A rule is worth changing only if the change pays on most datasets, not on one.

    python benchmarks/fit_recipe_check.py --root /work/fit_suite --work-dir /work/fit_table_15m1t \\
        --change lr=2.5 [--only trees,digits] [--seeds 0] [--threads 1]

Rows are kept in ``WORK/NAME/SEED/fit_check/CHANGE/row.json`` and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_suite import NAMES, write_suite  # noqa: E402
from fit_table import score  # noqa: E402


def changed_recipe(raw: dict, change: str, run: Path | None = None) -> dict:
    """The resolved recipe ``raw`` of the fit run ``run`` with ``change`` applied (module
    docstring)."""
    if "+" in change:
        for part in change.split("+"):
            raw = changed_recipe(raw, part, run)
        return raw
    if change == "none" or change.startswith("tta="):
        return raw
    key, _, value = change.partition("=")
    if key == "data" and value == "train" and run is not None:
        trial = yaml.safe_load((run / "trials" / "0000" / "config.yaml").read_text())
        raw["data"]["train"] = trial["data"]["train"]
        return raw
    factor = float(value)
    if key == "iters":
        raw["train"]["max_iters"] = round(raw["train"]["max_iters"] * factor)
    elif key == "lr":
        raw["optim"]["lr"] = raw["optim"]["lr"] * factor
    elif key == "scale":
        for section in ("train_transforms", "val_transforms"):
            steps = raw["data"][section]
            resize = [t for t in steps if t["type"] == "resize"]
            if resize:
                resize[0]["factor"] = round(resize[0]["factor"] * factor, 3)
            else:  # the recipe trains at native scale: the resize goes first (after mosaic)
                at = 1 if steps and steps[0]["type"] == "mosaic" else 0
                steps.insert(at, {"type": "resize", "factor": factor, "max_size": 2048})
    else:
        raise SystemExit(
            f"--change {change!r}: give none, lr=K, scale=K, iters=K, data=train or tta=h,v,hv"
        )
    return raw


def check_folder(run: Path, change: str) -> Path:
    """Where the row of ``change`` on the fit run ``run`` is kept."""
    return run / "fit_check" / change.replace("=", "_").replace(",", "-")


def run_check(run: Path, change: str, test: Path, threads: int) -> dict:
    from tunedet.config.loader import load_config
    from tunedet.engine.build import model_from_checkpoint
    from tunedet.engine.trainer import Trainer

    out = check_folder(run, change)
    out.mkdir(parents=True, exist_ok=True)
    raw = changed_recipe(yaml.safe_load((run / "recipe.yaml").read_text()), change, run)
    (out / "recipe_in.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    overrides = [
        "train.progress=false", "train.ckpt_every=0", "train.resume=false",
        "train.eval_every=0", "data.val=null", f"threads={threads}",
    ]  # fmt: skip
    if change.startswith("tta="):
        flips = change.partition("=")[2]
        overrides.append(f"eval.tta={{flips: [{flips}], merge: vote}}")
    cfg = load_config(str(out / "recipe_in.yaml"), overrides)
    start = time.monotonic()
    if change.startswith("tta="):
        checkpoint = json.loads((run / "fit.json").read_text())["checkpoint"]
        model, _ = model_from_checkpoint(checkpoint, "cpu", cfg=cfg)
        iters = None
    else:
        trainer = Trainer(cfg, out / "run", log=lambda *_: None)
        trainer.train()
        model, iters = trainer.eval_model, trainer.iteration
    row = {**score(cfg, model, test), "iters": iters, "min": (time.monotonic() - start) / 60}
    (out / "row.json").write_text(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/fit_suite"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fit_table"))
    parser.add_argument(
        "--change",
        required=True,
        help="none, lr=K, scale=K, iters=K, data=train, tta=h,v,hv; + combines",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else NAMES
    suite = write_suite(args.root, names)
    print("| dataset | seed | change | AP | AP50 | fit AP | fit AP50 | iterations | minutes |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for name, paths in suite.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            run = args.work_dir / name / str(seed) / "fit"
            if not (run / "row.json").is_file():
                print(f"<!-- {name} seed {seed}: no fit row kept in {run} -->", flush=True)
                continue
            fit_row = json.loads((run / "row.json").read_text())["row"]
            kept = check_folder(run, args.change)
            if (kept / "row.json").is_file():
                row = json.loads((kept / "row.json").read_text())
            else:
                row = run_check(run, args.change, paths["test"], args.threads)
            iters = "" if row["iters"] is None else str(row["iters"])
            print(
                f"| {name} | {seed} | {args.change} | {row['AP']:.3f} | {row['AP50']:.3f} | "
                f"{fit_row['AP']:.3f} | {fit_row['AP50']:.3f} | {iters} | {row['min']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
