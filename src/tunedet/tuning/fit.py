"""``tunedet fit DATA --budget 15m``: a detector configured for the data by measurement.

As nnU-Net (Isensee et al. 2021): a dataset fingerprint (``fingerprint.py``) → rules
that set the knobs from it (``fit_rules.py``) → a small empirical choice where the rules
leave one → the final training. In order, all inside the wall-time budget:

1. read DATA (``fit_data.py``), hold out a seeded validation split when none is given
   (images that share pixels, overlapping tiles or copies, are held out as a group of
   neighbours and masked out of the training part: ``shared_pixels.py``);
2. fingerprint the training part; apply the data rules to the ``retinanet/demo`` recipe;
3. time a few steps, then the LR finder (Smith 2017) for the base LR (skipped, and said
   so, when the budget is too short for it);
4. a multi-fidelity Optuna study over the knobs the rules leave open (the scale around
   the rule's when whole images are trained, horizontal flips for imagery that is not
   overhead; not the LR, which short trials would set too low: ``fit_search.py``): a
   grid, each combination one trial of ``T`` iterations, the rules' recipe first,
   evaluated at ``T/3``, ``2T/3`` and ``T`` on the validation split, successive halving
   (Jamieson & Talwalkar 2016; reduction factor 3, first rung ``T/3``) stopping the
   weaker ones; ``T`` is sized so that the grid fills the search's share of the budget.
   No knob open (overhead imagery trained as crops): one trial, the rules' recipe, whose
   weights give the validation figures. The study is stored in ``OUT/study.db`` (or
   ``--storage``, e.g. PostgreSQL): a re-run continues it, and its trials count against
   the budget again only when run. On a CPU the trials run side by side in P processes
   of T threads (``tuning/trial_workers.py``; at most ``MAX_TRIAL_WORKERS`` processes and
   no more than the grid's trials; one at a time when ``threads`` alone is given, or the
   search is short), sized from a second speed probe at T threads;
5. the final training of the best trial's recipe with all the budget left
   (``train.max_minutes``, whose schedule is sized to the time: engine/time_budget.py),
   on every image when fit held the validation split out itself and a trial completed
   (the held-out images have chosen the knobs by then), else on the training part;
6. outside the budget: the evaluation on the validation split of the final model, with
   and without flip TTA (kept if it paid); when the final model trained on the held-out
   images, of the best trial's weights, and flip TTA with the trained flips (no unseen
   image is left to judge it: ``fit_rules.trained_flips_tta_rule``); the recipe as
   ``OUT/recipe.yaml`` (``tunedet train`` reproduces it) and the report
   ``OUT/report.html``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunedet.tuning.fingerprint import Fingerprint, Overhead, fingerprint_from_coco
from tunedet.tuning.fit_rules import (
    DetectorGeometry,
    Rule,
    data_rules,
    lr_rule,
    schedule_rule,
    trained_flips_tta_rule,
    tta_rule,
)

BASE_RECIPE = "retinanet/demo"
FINDER_SHARE = 0.08  # of the budget, at most, for the LR finder
FINDER_ITERS = (15, 50)  # fewer steps than the first: no finder
# The min/10 suggestion times this: fit's final models trained again at 2.5× the min/10
# LR, for the same iterations, scored higher test AP on every suite dataset (benchmarks/
# fit_recipe_check.py --change lr=2.5; docs/PERFORMANCE.md), so fit starts there (min/4).
FINDER_LR_FACTOR = 2.5
SEARCH_SHARE = 0.3  # of the budget left after the LR finder
MAX_TRIAL_WORKERS = 4  # search trials side by side, at most
MIN_TRIAL_ITERS = 30  # shorter trials would rank nothing: no search
SIDE_BY_SIDE_MIN_S = 60  # a shorter search runs its trials one at a time, in this process
METRIC = "AP50"


def parse_budget(text: str | float) -> float:
    """Seconds of ``"15m"``, ``"90s"``, ``"1.5h"`` or a bare number of minutes."""
    if isinstance(text, int | float):
        seconds = float(text) * 60
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
        if not match:
            raise ValueError(f"--budget {text!r}: give a duration such as 15m, 90s or 1.5h")
        value, unit = float(match.group(1)), match.group(2) or "m"
        seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise ValueError(f"--budget must be positive, got {text!r}")
    return seconds


class Clock:
    """The budget's wall clock, started at fit's start."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed


@dataclass
class FitResult:
    """What fit did: the rules, the search, the final run and where it all is."""

    out: Path
    rules: list[Rule]
    fingerprint: Fingerprint
    recipe: Path
    checkpoint: str | None
    metrics: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    importance_basis: str = ""  # which trials, at which length, the importances rest on
    timings: dict[str, float] = field(default_factory=dict)
    split: str = ""
    report: Path | None = None
    scored_by: str = "the final model"  # whose weights ``metrics`` are


@dataclass
class SearchOutcome:
    """What the search found: its trials, the knobs' importances, the best trial's knobs
    and number (none without a complete trial), and its rule for the report."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    importance_basis: str = ""
    chosen: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    rule: Rule | None = None


def recipe_raw(
    base: dict[str, Any],
    knobs: dict[str, Any],
    train: dict[str, Any],
    val: dict[str, Any],
    classes: list[str],
) -> dict[str, Any]:
    """The raw config of the base recipe with the knobs applied (a plain dict for the
    schema; ``knobs`` as the rules and the search set them)."""
    raw = json.loads(json.dumps(base))
    raw.pop("_base_", None)
    model = raw["model"]
    model["num_classes"] = len(classes)
    model["backbone"]["out_indices"] = list(knobs["out_indices"])
    model["neck"]["num_outs"] = knobs["num_outs"]
    model["anchor_generator"]["strides"] = list(knobs["strides"])
    model["anchor_generator"]["ratios"] = list(knobs["ratios"])
    model["assigner"] = dict(knobs["assigner"])
    model["max_dets"] = knobs["max_dets"]
    scale = knobs["scale"] * knobs.get("scale_mult", 1.0)
    resize = (
        [] if scale == 1.0 else [{"type": "resize", "factor": round(scale, 3), "max_size": 2048}]
    )
    train_transforms = [knobs["mosaic"]] if knobs.get("mosaic") else []
    train_transforms += resize
    if knobs.get("crop"):
        train_transforms.append({"type": "random_crop", "size": knobs["crop"], "min_visible": 0.5})
    for flip in knobs["flips"]:
        if flip["type"] != "hflip" or knobs.get("hflip", True):
            train_transforms.append(dict(flip))
    train_transforms.append({"type": "normalize"})
    raw["data"] = {
        "train": train,
        "val": val,
        "train_transforms": train_transforms,
        "val_transforms": [*resize, {"type": "normalize"}],
        "batch_size": knobs["batch_size"],
        "val_batch_size": 1 if knobs.get("crop") else knobs["batch_size"],
        "num_workers": 0,
    }
    raw["optim"]["lr"] = float(f"{knobs['lr']:.4g}")
    raw["schedule"]["warmup"]["iters"] = knobs.get("warmup_iters", 100)
    raw["train"] = {
        "max_iters": knobs.get("max_iters"),
        "max_minutes": knobs.get("max_minutes"),
        "ckpt_every": knobs.get("ckpt_every", 0),
        "log_every": 20,
        "eval_every": knobs.get("eval_every", 0),
        "progress": knobs.get("progress", False),
        "resume": knobs.get("resume", False),
    }
    raw["eval"] = {"tta": knobs.get("tta")}
    raw["seed"] = knobs.get("seed", 0)
    raw["device"] = knobs.get("device", "auto")
    raw["threads"] = knobs.get("threads")
    raw["work_dir"] = knobs.get("work_dir")
    return raw


def max_dets_rule(fp: Fingerprint) -> Rule:
    """Detections kept per image: at least 100, and twice the most objects in an image."""
    most = int(fp.objects_per_image.max())
    keep = max(100, 100 * math.ceil(2 * most / 100))
    why = f"up to {most} objects in an image: {keep} detections kept per image"
    return Rule("detections", {"max_dets": keep}, why)


def fit(
    data: str | Path,
    budget: str | float = "15m",
    out: str | Path | None = None,
    val: str | Path | None = None,
    overhead: Overhead = "auto",
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    storage: str | None = None,
    search: bool = True,
    progress: bool = False,
    log: Any = print,
    workers: int | None = None,
) -> FitResult:
    """Configure and train a detector for ``data`` within ``budget`` (see the module
    docstring); returns a `FitResult` with the recipe, the checkpoint and the metrics."""
    from tunedet.config.loader import load_raw

    clock = Clock(parse_budget(budget))
    out = Path(out) if out is not None else Path("runs") / "fit"
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. data and split
    prepared = prepare_data(data, val, out, seed)
    train_spec, val_spec, classes, split_note, train_set, every_image = prepared
    log(f"data: {len(train_set)} training images, {split_note}")
    # 2. fingerprint and the data rules
    fp = fingerprint_from_coco(train_set.coco_ground_truth(), classes, overhead)
    (out / "fingerprint.json").write_text(json.dumps(fp.summary(), indent=2))
    from tunedet.engine.build import resolve_device

    device_kind = resolve_device(device).type
    rules = data_rules(fp, DetectorGeometry(), device_kind, len(train_set), clock.seconds / 60)
    rules.append(max_dets_rule(fp))
    knobs: dict[str, Any] = {"seed": seed, "device": device, "threads": threads}
    for rule in rules:
        knobs.update(rule.knobs)
        log(f"rule {rule.name}: {rule.reason}")
    base = load_raw(_base_path())
    knobs["lr"] = float(base["optim"]["lr"])
    timings["data and rules"] = clock.elapsed

    # 3. speed and LR
    seconds_per_iter = measure_speed(
        recipe_raw(base, knobs, train_spec, val_spec, classes), out / "speed_probe"
    )
    log(f"speed: {seconds_per_iter:.3f} s per training iteration")
    timings["speed probe"] = clock.elapsed - sum(timings.values())
    lr = find_lr(base, knobs, train_spec, val_spec, classes, clock, seconds_per_iter)
    rules.append(lr)
    knobs.update(lr.knobs)
    log(f"rule lr: {lr.reason}")
    timings["LR finder"] = clock.elapsed - sum(timings.values())

    # 4. search
    outcome = SearchOutcome()
    if search:
        outcome = run_search(
            base, knobs, train_spec, val_spec, classes, fp, out, clock, seconds_per_iter,
            storage, seed, log, workers, device_kind,
        )  # fmt: skip
        rules.append(outcome.rule)
        log(f"search: {outcome.rule.reason}")
    best, best_trial = outcome.chosen, outcome.best_trial
    timings["search"] = clock.elapsed - sum(timings.values())

    # 5. the final training with the rest of the budget
    final_knobs = {**knobs, **best, "progress": progress, "ckpt_every": 0, "resume": True}
    final_knobs["tta_flips"] = trained_tta_flips(final_knobs)
    if best.get("scale_mult", 1.0) != 1.0:  # another input size: another step time
        seconds_per_iter = measure_speed(
            recipe_raw(base, final_knobs, train_spec, val_spec, classes), out / "speed_probe"
        )
        log(f"speed at the chosen scale: {seconds_per_iter:.3f} s per training iteration")
    schedule = schedule_rule(max(clock.left, 1.0), seconds_per_iter)
    final_knobs.update(schedule.knobs)
    rules.append(schedule)
    log(f"rule schedule: {schedule.reason}")
    # The held-out images that fit chose itself have done their work once the knobs are
    # chosen: the final model trains on every image, and the validation figures come from
    # the best search trial's weights, which never saw them.
    final_data = final_data_rule(every_image is not None, best_trial, bool(best))
    rules.append(final_data)
    on_every_image = final_data.knobs["final_train"] == "every image"
    final_train = every_image if on_every_image else train_spec
    trainer, val_set = train_final(base, final_knobs, final_train, val_spec, classes, out, clock)
    timings["final training"] = clock.elapsed - sum(timings.values())
    log(f"final training: {trainer.iteration} iterations")

    # 6. outside the budget: the validation figures, TTA, the recipe, the report
    if on_every_image:
        metrics = trial_metrics(out, best_trial)
        flips = final_knobs["tta_flips"]
        tta = trained_flips_tta_rule(flips) if flips else NO_FLIPS_TTA
        scored_by = f"search trial {best_trial}'s weights (the final model trained on them)"
    else:
        trainer.val_set = val_set
        metrics = trainer.evaluate()
        (trainer.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tta = check_tta(trainer, base, final_knobs, train_spec, val_spec, classes, metrics)
        scored_by = "the final model"
    log(f"validation {METRIC} {metrics.get(METRIC, 0):.4f} ({scored_by})")
    rules.append(tta)
    log(f"rule tta: {tta.reason}")
    recipe_knobs = {
        **final_knobs,
        **tta.knobs,
        "max_iters": trainer.iteration,
        "max_minutes": None,
        "progress": True,
        "ckpt_every": 500,
        "resume": True,
        "work_dir": str(out / "recipe_run"),
    }
    recipe = write_recipe(
        out, recipe_raw(base, recipe_knobs, final_train, val_spec, classes), rules
    )
    result = FitResult(
        out=out,
        rules=rules,
        fingerprint=fp,
        recipe=recipe,
        checkpoint=trainer.last_checkpoint,
        metrics=metrics,
        trials=outcome.rows,
        importances=outcome.importances,
        importance_basis=outcome.importance_basis,
        timings={k: round(v, 1) for k, v in timings.items()},
        split=split_note,
        scored_by=scored_by,
    )
    from tunedet.tuning.fit_report import fit_record, write_fit_report

    result.report = write_fit_report(out, fit_record(result, clock.seconds))
    log(f"recipe: {recipe}\nreport: {result.report}")
    return result


def _base_path() -> Path:
    from tunedet.config.loader import resolve_config_path

    return resolve_config_path(BASE_RECIPE)


def prepare_data(
    data: str | Path, val: str | Path | None, out: Path, seed: int
) -> tuple[dict, dict, list[str], str, Any, dict | None]:
    """(train section, val section, class names, a sentence on the split, train dataset,
    the section of every image when fit held the split out itself, else None)."""
    from tunedet.data.build import build_dataset
    from tunedet.tuning.fit_data import (
        dataset_spec,
        find_shared_pixels,
        holdout_split,
        mask_shared_pixels,
        write_split,
    )

    train_spec, val_spec = dataset_spec(data)
    if val is not None:
        val_spec, _ = dataset_spec(val)
    full = build_dataset(train_spec)
    classes = list(full.classes)
    if val_spec is not None:
        if val_spec["type"] in ("yolo",) and "classes" not in val_spec:
            val_spec["classes"] = classes
        if val_spec["type"] in ("voc", "coco"):
            val_spec.setdefault("classes", classes)
        train_spec.setdefault("classes", classes)
        return train_spec, val_spec, classes, "validation split as given", full, None
    if not hasattr(full, "records"):
        raise ValueError(f"{data}: fit holds a split out of file datasets only (COCO, VOC, YOLO)")
    shared, shared_note = find_shared_pixels(full)
    every_image = {**train_spec, "classes": classes}
    train_idx, val_idx = holdout_split(len(full.records), seed, shared=shared)
    masked = mask_shared_pixels(full, train_idx, val_idx, shared, out / "data" / "masked")
    train_spec = write_split(full, train_idx, out / "data" / "train.json", masked)
    val_spec = write_split(full, val_idx, out / "data" / "val.json")
    note = "; ".join(
        part
        for part in (
            f"{len(val_idx)} of {len(full.records)} images held out for validation "
            f"(seeded permutation, seed {seed}; {out / 'data'})",
            shared_note,
            masked.note,
        )
        if part
    )
    return train_spec, val_spec, classes, note, build_dataset(train_spec), every_image


def validated(raw: dict[str, Any]) -> Any:
    from tunedet.config.loader import validate

    return validate(raw, "tunedet fit recipe")


def measure_speed(raw: dict[str, Any], run_dir: Path, steps: int = 6) -> float:
    """Seconds per training iteration of the recipe: ``steps`` iterations run, the first
    two (one-off costs) left out of the mean."""
    import shutil

    from tunedet.engine.trainer import Trainer

    shutil.rmtree(run_dir, ignore_errors=True)  # a probe of an earlier run
    probe = json.loads(json.dumps(raw))
    probe["data"]["val"] = None
    probe["train"].update(max_iters=steps, max_minutes=None, log_every=1, resume=False)
    Trainer(validated(probe), run_dir, log=lambda *_: None).train()
    times = [
        row["time"]
        for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "time" in row
    ]
    if len(times) < 3:
        return max(times[-1] / len(times), 1e-3) if times else 1.0
    return max((times[-1] - times[1]) / (len(times) - 2), 1e-3)


def find_lr(
    base: dict,
    knobs: dict,
    train_spec: dict,
    val_spec: dict,
    classes: list[str],
    clock: Clock,
    seconds_per_iter: float,
) -> Rule:
    """The LR rule from a short LR finder, or the base LR when the budget is too short."""
    from tunedet.analysis.lr_finder import run_lr_finder

    base_lr = knobs["lr"]
    affordable = int(FINDER_SHARE * clock.seconds / seconds_per_iter)
    iters = min(affordable, FINDER_ITERS[1])
    if iters < FINDER_ITERS[0]:
        detail = (
            f"no LR finder: {FINDER_SHARE:.0%} of the budget holds {affordable} iterations at "
            f"{seconds_per_iter:.2f} s (fewer than {FINDER_ITERS[0]})"
        )
        return lr_rule(None, base_lr, detail)
    raw = recipe_raw(base, knobs, train_spec, val_spec, classes)
    raw["train"].update(max_iters=iters, max_minutes=None)  # the recipe's length comes later
    cfg = validated(raw)
    result = run_lr_finder(cfg, start=base_lr / 100, end=base_lr * 100, iters=iters, progress=False)
    try:
        suggested = result.suggestion("min/10") * FINDER_LR_FACTOR if len(result.lrs) >= 5 else None
    except ValueError:  # too few finite losses to suggest from
        suggested = None
    detail = (
        f"LR finder, {len(result.lrs)} steps from {base_lr / 100:.2g} to {base_lr * 100:.2g} "
        f"(stopped: {result.stopped}), min/10 rule × {FINDER_LR_FACTOR:g}"
    )
    return lr_rule(suggested, base_lr, detail)


def run_search(
    base: dict,
    knobs: dict,
    train_spec: dict,
    val_spec: dict,
    classes: list[str],
    fp: Fingerprint,
    out: Path,
    clock: Clock,
    seconds_per_iter: float,
    storage: str | None,
    seed: int,
    log: Any,
    workers: int | None = None,
    device_kind: str = "cpu",
) -> SearchOutcome:
    """The multi-fidelity study (module docstring, step 4)."""
    from tunedet.tuning.fit_search import KEEP_RULES_MARGIN, FitSearch, search_grid
    from tunedet.tuning.trial_workers import choose_layout

    search_scale = knobs.get("crop") is None
    grid = search_grid(fp.overhead.overhead, search_scale, seed)
    search_seconds = SEARCH_SHARE * clock.left
    cap = min(len(grid), MAX_TRIAL_WORKERS)
    layout = choose_layout(workers, None, knobs["threads"], device_kind, cap)
    if workers is None and (knobs["threads"] or search_seconds < SIDE_BY_SIDE_MIN_S):
        # --threads alone caps the CPU fit uses (the fit table compares at equal threads);
        # in a short search a worker process's start-up would be a large share of it
        layout = choose_layout(1, None, knobs["threads"], device_kind, None)
    trial_knobs = dict(knobs)
    trial_speed = seconds_per_iter
    if layout.workers > 1:
        # P trials of T threads each: the trials' own speed, measured at that width
        trial_knobs["threads"] = layout.threads
        trial_speed = measure_speed_at(
            recipe_raw(base, trial_knobs, train_spec, val_spec, classes),
            out / "speed_probe_trial",
        )
        log(f"speed: {trial_speed:.3f} s per iteration at {layout.threads} thread(s) a trial")
    trial_iters = trial_length(search_seconds, len(grid), layout.workers, trial_speed)
    if trial_iters < MIN_TRIAL_ITERS:
        why = (
            f"no search: {search_seconds:.0f} s ({SEARCH_SHARE:.0%} of the budget left) holds "
            f"trials of {trial_iters} iterations at {trial_speed:.2f} s "
            f"(fewer than {MIN_TRIAL_ITERS}); the rules' recipe is trained"
        )
        return SearchOutcome(rule=Rule("search", {}, why))
    trial_iters = 3 * math.ceil(trial_iters / 3)
    search = FitSearch(
        make_raw=functools.partial(trial_raw, base, trial_knobs, train_spec, val_spec, classes),
        out=out,
        storage=storage,
        seed=seed,
        trial_iters=trial_iters,
        overhead=fp.overhead.overhead,
        metric=METRIC,
        log=log,
        search_scale=search_scale,
    )
    started = clock.elapsed
    deadline = started + search_seconds
    if layout.workers > 1:
        log(f"search: {layout}")
        search.optimize_side_by_side(
            time.monotonic() + search_seconds, layout.workers, layout.threads
        )
    else:
        search.optimize(lambda: deadline - clock.elapsed)
    spent = clock.elapsed - started
    rows = search.rows()
    importances, basis = search.importances()
    best = search.best()
    complete = sum(1 for r in rows if r["state"] == "complete")
    pruned = sum(1 for r in rows if r["state"].startswith("pruned"))
    if best is None:
        why = f"{len(rows)} trial(s) of {trial_iters} iterations, none complete: the rules' recipe"
        return SearchOutcome(rows, importances, basis, rule=Rule("search", {}, why))
    chosen, value, number = best
    shown = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in chosen.items()
    )
    side = (
        f", {layout.workers} at a time × {layout.threads} thread(s)" if layout.workers > 1 else ""
    )
    if chosen == {}:  # the lone trial of a grid with no knob open
        why = (
            f"no knob left open (the LR is the finder's; the scale is the rule's, as crops "
            f"cost the same at any scale; overhead imagery keeps every flip): one trial of "
            f"the rules' recipe, {trial_iters} iterations in {spent:.0f} s on the training "
            f"part, gives the validation figures ({METRIC} {value:.3f})"
        )
        return SearchOutcome(rows, importances, basis, chosen, number, Rule("search", {}, why))
    kept = (
        f"; the rules' recipe is kept unless another trial beats it by more than "
        f"{KEEP_RULES_MARGIN:g} {METRIC}; the LR finder's LR kept (short trials favour a low LR)"
    )
    if not search.search_scale:
        kept += (
            "; the scale rule's factor kept (trained as crops: a step costs the same at "
            "any scale, and short trials favour small inputs)"
        )
    why = (
        f"{len(rows)} of {len(grid)} grid trial(s) of {trial_iters} iterations in "
        f"{spent:.0f} s (planned {search_seconds:.0f} s{side}) "
        f"({complete} complete, {pruned} pruned by successive halving): trial {number} "
        f"best, {METRIC} {value:.3f} ({shown}){kept}"
    )
    return SearchOutcome(
        rows, importances, basis, chosen, number, Rule("search", dict(chosen), why)
    )


def trial_length(seconds: float, trials: int, workers: int, seconds_per_iter: float) -> int:
    """Iterations ``T`` of each of ``trials`` search trials so that they fill ``seconds``:
    the first runs to the end, each other costs ~0.56 T (two in three pruned at T/3, a
    third complete), ``workers`` at a time, and never less than one whole trial of wall
    time."""
    lengths = max(1.0, (1 + 0.56 * (trials - 1)) / workers)
    return int(seconds / (lengths * seconds_per_iter))


def trial_raw(
    base: dict,
    knobs: dict,
    train_spec: dict,
    val_spec: dict,
    classes: list[str],
    chosen: dict[str, Any],
) -> dict[str, Any]:
    """A search trial's raw config: the recipe with the trial's knobs (a module-level
    function, so that search worker processes receive it)."""
    return recipe_raw(base, {**knobs, **chosen}, train_spec, val_spec, classes)


def measure_speed_at(raw: dict[str, Any], run_dir: Path) -> float:
    """``measure_speed`` at the recipe's ``threads``, leaving this process's torch thread
    count as it was (the trainer sets it)."""
    import torch

    before = torch.get_num_threads()
    try:
        return measure_speed(raw, run_dir)
    finally:
        torch.set_num_threads(before)


def train_final(
    base: dict,
    knobs: dict,
    train_spec: dict,
    val_spec: dict,
    classes: list[str],
    out: Path,
    clock: Clock,
) -> tuple[Any, Any]:
    """Train the recipe in ``OUT/final`` until the budget's clock runs out; returns the
    trainer and the validation set (not evaluated yet: that is outside the budget)."""
    from tunedet.engine.trainer import Trainer

    raw = recipe_raw(base, {**knobs, "max_iters": None}, train_spec, val_spec, classes)
    trainer = Trainer(validated(raw), out / "final", log=lambda *_: None)
    # the budget's clock, not the config's: the trainer was built on the budget's time
    trainer.cfg.train.max_minutes = max(clock.left, 1.0) / 60
    val_set, trainer.val_set = trainer.val_set, None  # the evaluation is outside the budget
    trainer.train()
    return trainer, val_set


NO_FLIPS_TTA = Rule(
    "tta", {"tta": None}, "no TTA: the final recipe trains without flips (the search turned "
    "them off), so a flipped image is not a sample it was taught"
)  # fmt: skip


def trained_tta_flips(knobs: dict[str, Any]) -> list[str]:
    """The augment rule's TTA flips, less those that mirror left-right when the search
    turned horizontal flips off for training (``hv`` mirrors too)."""
    if knobs.get("hflip", True):
        return list(knobs["tta_flips"])
    return [f for f in knobs["tta_flips"] if "h" not in f]


def check_tta(
    trainer: Any,
    base: dict,
    knobs: dict,
    train_spec: dict,
    val_spec: dict,
    classes: list[str],
    metrics: dict[str, float],
) -> Rule:
    """Evaluate the final weights with the data's flip TTA on the validation split."""
    flips = knobs["tta_flips"]
    if not flips:
        return NO_FLIPS_TTA
    raw = recipe_raw(
        base, {**knobs, "tta": {"flips": flips, "merge": "vote"}}, train_spec, val_spec, classes
    )
    plain = float(metrics.get(METRIC, 0.0))
    trainer.cfg = validated(raw)
    with_tta = float(trainer.evaluate().get(METRIC, 0.0))
    return tta_rule(METRIC, plain, with_tta, flips)


def final_data_rule(held_out_here: bool, best_trial: int | None, chose: bool = True) -> Rule:
    """Which images the final model trains on, and why: every image when fit held the
    validation split out itself and a search trial completed, else the training part.
    ``chose``: the search had knobs to choose (not a lone trial of the rules' recipe)."""
    on_every_image = held_out_here and best_trial is not None
    if on_every_image:
        served = "served to choose the knobs (search)" if chose else "had no knob to choose"
        why = (
            f"every image, the held-out ones included: they {served}, and the validation "
            f"figures are search trial {best_trial}'s, whose weights never saw them"
        )
    elif held_out_here:
        why = (
            "the training part only: no search trial completed, so the held-out images "
            "score the final model"
        )
    else:
        why = "the training split (the validation split was given)"
    return Rule("final data", {"final_train": "every image" if on_every_image else "train"}, why)


def trial_metrics(out: Path, number: int) -> dict[str, float]:
    """Search trial ``number``'s last weights on the validation split."""
    from tunedet.config.loader import load_config
    from tunedet.data.build import build_dataset
    from tunedet.engine.build import eval_settings, model_from_checkpoint, resolve_device
    from tunedet.engine.evaluator import evaluate_model

    config = str(out / "trials" / f"{number:04d}" / "config.yaml")
    cfg = load_config(config, ["train.progress=false"])
    device = resolve_device(cfg.device)
    model, _ = model_from_checkpoint(Path(config).with_name("last.pt"), device, cfg=cfg)
    quiet = lambda *_: None  # noqa: E731
    return evaluate_model(model, build_dataset(cfg.data.val), eval_settings(cfg), device, quiet)


def write_recipe(out: Path, raw: dict[str, Any], rules: list[Rule]) -> Path:
    """``OUT/recipe.yaml``: the final recipe, fully resolved, each rule's reason as a
    comment; ``tunedet train OUT/recipe.yaml`` trains it again."""
    from tunedet.config.loader import config_to_yaml

    cfg = validated(raw)
    lines = ["# tunedet fit's recipe: `tunedet train recipe.yaml` trains it again.", "#"]
    for rule in rules:
        lines.append(f"# {rule.name}: {rule.reason}")
    path = out / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n" + config_to_yaml(cfg))
    return path


def rank_agreement(out: str | Path, max_iters: int | None = None, log: Any = print) -> dict:
    """Train every searched trial's recipe (``OUT/trials/NNNN/config.yaml``) of the fit
    run in ``out`` at its final run's length (or ``max_iters``) and compare the ranks:
    Spearman's ρ between each trial's last reported AP50 (short) and its full-length AP50
    on the validation split. Costs one full training per trial; ``fit.json`` and the
    report are rewritten with the figure."""
    from scipy.stats import spearmanr

    from tunedet.config.loader import load_config
    from tunedet.engine.trainer import Trainer
    from tunedet.tuning.fit_report import write_fit_report

    out = Path(out)
    record = json.loads((out / "fit.json").read_text())
    length = max_iters or load_config(record["recipe"]).train.max_iters
    runs = []
    for row in record["trials"]:
        if row["value"] is None:
            continue
        folder = out / "trials" / f"{row['trial']:04d}"
        cfg = load_config(
            str(folder / "config.yaml"),
            [f"train.max_iters={length}", "train.max_minutes=null", "train.eval_every=0",
             "train.resume=false"],
        )  # fmt: skip
        full = Trainer(cfg, out / "rank_check" / folder.name, log=lambda *_: None).train()
        runs.append({"trial": row["trial"], "short": row["value"], "full": full.get(METRIC, 0.0)})
        log(f"trial {row['trial']}: short {row['value']:.4f}, full {runs[-1]['full']:.4f}")
    if len(runs) < 3:
        raise ValueError(f"rank agreement needs 3 trials with a value, the study has {len(runs)}")
    rho = float(spearmanr([r["short"] for r in runs], [r["full"] for r in runs]).statistic)
    rank = {"spearman": rho, "iterations": length, "runs": runs}
    write_fit_report(out, {**record, "rank_agreement": rank})
    return rank


def seed_spread(
    out: str | Path, runs: int = 2, max_iters: int | None = None, log: Any = print
) -> dict:
    """Train the recipe of the fit run in ``out`` (``OUT/recipe.yaml``, at its final
    length or ``max_iters``) ``runs`` more times with the seeds after fit's, on the
    training part, and score each on the validation split (single pass): mean ± sample
    std of AP and AP50 over those runs, and the final model's own figures when it was
    scored on a split it never trained on. ``fit.json`` and the report are rewritten with
    the figures."""
    import statistics

    from tunedet.config.loader import load_config
    from tunedet.engine.trainer import Trainer
    from tunedet.tuning.fit_report import write_fit_report

    if runs < 1:
        raise ValueError(f"seed_spread: runs must be at least 1, got {runs}")
    out = Path(out)
    record = json.loads((out / "fit.json").read_text())
    overrides = ["train.max_minutes=null", "train.eval_every=0", "train.resume=false",
                 "train.progress=false", "train.ckpt_every=0", "eval.tta=null"]  # fmt: skip
    if max_iters is not None:
        overrides.append(f"train.max_iters={max_iters}")
    recipe = load_config(record["recipe"], overrides)
    trial_configs = sorted((out / "trials").glob("*/config.yaml"))
    if trial_configs:  # the training part; the recipe's may be every image
        recipe.data.train = load_config(str(trial_configs[0])).data.train

    def sample(seed: int, metrics: dict[str, float], run: str) -> dict[str, Any]:
        return {"seed": seed, "AP": metrics.get("AP", 0.0), "AP50": metrics.get(METRIC, 0.0),
                "run": run}  # fmt: skip

    samples = []
    if max_iters is None and record.get("scored_by", "the final model") == "the final model":
        samples.append(sample(recipe.seed, record["metrics"], "final model"))
    for seed in range(recipe.seed + 1, recipe.seed + 1 + runs):
        cfg = recipe.model_copy(deep=True)
        cfg.seed = seed
        metrics = Trainer(cfg, out / "seed_check" / f"seed_{seed}", log=lambda *_: None).train()
        samples.append(sample(seed, metrics, "recipe again"))
        log(f"seed {seed}: AP {samples[-1]['AP']:.4f}, AP50 {samples[-1]['AP50']:.4f}")
    spread: dict[str, Any] = {"iterations": recipe.train.max_iters, "runs": samples}
    for key in ("AP", "AP50"):
        values = [s[key] for s in samples]
        std = statistics.stdev(values) if len(values) > 1 else None
        spread[key] = {"mean": statistics.fmean(values), "std": std}
    write_fit_report(out, {**record, "seed_spread": spread})
    return spread
