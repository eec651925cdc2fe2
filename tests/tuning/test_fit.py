"""``tunedet fit`` end to end on a tiny synthetic dataset, and its data handling."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.data.coco_writer import write_coco
from tunedet.data.synthetic import SyntheticShapes
from tunedet.tuning import fit as fit_module
from tunedet.tuning.fit_data import dataset_spec, holdout_split
from tunedet.tuning.fit_search import FitSearch


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitdata")
    shapes = SyntheticShapes(
        num_images=20, image_size=32, seed=0, num_classes=2, min_size=6, max_objects=3
    )
    return write_coco(shapes, root)


# the rules' choices for a tiny search: native scale, the demo's pyramid, ATSS, flips only
TINY_KNOBS = {
    "scale": 1.0,
    "crop": None,
    "strides": [8, 16, 32],
    "out_indices": [2, 3, 4],
    "num_outs": 3,
    "ratios": [1.0],
    "assigner": {"type": "atss", "topk": 9},
    "flips": [{"type": "hflip", "p": 0.5}],
    "mosaic": None,
    "batch_size": 4,
    "max_dets": 100,
    "lr": 0.002,
    "threads": 1,
}


def test_fit_end_to_end_writes_a_recipe_that_train_reads(tiny_coco, tmp_path, monkeypatch):
    # short trials allowed, so that a fast machine runs the search inside seconds
    monkeypatch.setattr(fit_module, "MIN_TRIAL_ITERS", 3)
    out = tmp_path / "fit"
    lines = []
    result = fit_module.fit(tiny_coco, budget="25s", out=out, threads=1, log=lines.append)
    names = [r.name for r in result.rules]
    for name in ("scale", "crop", "levels", "anchors", "assigner", "augment", "batch", "lr"):
        assert name in names
    assert {"search", "schedule", "tta"} <= set(names)
    assert all(r.reason for r in result.rules)
    # the split: 4 of 20 images held out, disjoint from the training part
    train = json.loads((out / "data" / "train.json").read_text())
    val = json.loads((out / "data" / "val.json").read_text())
    assert len(val["images"]) == 4 and len(train["images"]) == 16
    assert not {i["file_name"] for i in train["images"]} & {i["file_name"] for i in val["images"]}
    assert "4 of 20 images held out" in result.split
    # the search ran trials (the first one is the rules' recipe) unless too slow a machine
    if result.trials:
        assert (out / "study.db").is_file()
        first = min(result.trials, key=lambda t: t["trial"])
        assert first["params"]["scale_mult"] == 1.0 and first["params"].get("hflip", True)
    # the recipe: a config `tunedet train` loads, trained for the final run's length
    cfg = load_config(str(result.recipe))
    final = sorted((out / "final" / "checkpoints").glob("iter_*.pt"))[-1]
    assert cfg.train.max_iters == int(final.stem.split("_")[1])
    assert result.checkpoint == str(final)
    assert cfg.model.num_classes == 2
    scale = next(r for r in result.rules if r.name == "scale").knobs["scale"]
    resize = [t for t in cfg.data.train_transforms if t.type == "resize"]
    if scale != 1.0:
        assert resize and resize[0].factor > 0
    assert "AP50" in result.metrics
    # a split fit held out itself: the final model trains on every image once a trial has
    # chosen the knobs, and the validation figures are that trial's
    final_data = next(r for r in result.rules if r.name == "final data")
    if any(t["state"] == "complete" for t in result.trials):
        assert Path(cfg.data.train.ann_file) == Path(tiny_coco)
        assert "every image" in final_data.reason and "trial" in result.scored_by
        # no unseen image is left to judge TTA: the trained flips' TTA, said why
        tta = next(r for r in result.rules if r.name == "tta")
        trained = {t.type for t in cfg.data.train_transforms}
        if tta.knobs["tta"] is None:  # the search turned the flips off
            assert "trains without flips" in tta.reason and "hflip" not in trained
        else:
            assert "no unseen images are left" in tta.reason
            assert cfg.eval.tta.flips == tta.knobs["tta"]["flips"]
            assert ("h" in cfg.eval.tta.flips) == ("hflip" in trained)
    else:
        assert Path(cfg.data.train.ann_file) == out / "data" / "train.json"
        assert result.scored_by == "the final model"
    report = (out / "report.html").read_text()
    for heading in ("Fingerprint", "Rules", "Search", "Rank agreement", "Where the budget went"):
        assert heading in report
    assert json.loads((out / "fit.json").read_text())["rules"][0]["reason"]
    assert any(line.startswith("rule scale:") for line in lines)
    assert "Seed spread" in report and "Not measured" in report

    # the seed spread: the recipe trained again with the next seeds, on the training part
    spread = fit_module.seed_spread(out, runs=2, max_iters=2, log=lambda *_: None)
    assert [r["seed"] for r in spread["runs"]] == [1, 2]  # fit's own seed is 0
    values = [r["AP50"] for r in spread["runs"]]
    assert spread["AP50"]["mean"] == pytest.approx(np.mean(values))
    assert spread["AP50"]["std"] == pytest.approx(np.std(values, ddof=1))
    again = load_config(str(out / "seed_check" / "seed_2" / "config.yaml"))
    assert again.seed == 2 and again.train.max_iters == 2 and again.eval.tta is None
    assert Path(again.data.train.ann_file) == out / "data" / "train.json"
    assert json.loads((out / "fit.json").read_text())["seed_spread"]["runs"] == spread["runs"]
    report = (out / "report.html").read_text()
    assert "over 2 runs of 2 iterations" in report and "±" in report


def test_holdout_split_is_seeded_and_disjoint():
    a_train, a_val = holdout_split(50, seed=3)
    b_train, b_val = holdout_split(50, seed=3)
    np.testing.assert_array_equal(a_val, b_val)
    assert len(a_val) == 10 and not set(a_train) & set(a_val)
    assert len(holdout_split(2, 0)[1]) == 1
    assert not np.array_equal(holdout_split(50, seed=4)[1], a_val)
    with pytest.raises(ValueError, match="at least 2 images"):
        holdout_split(1, 0)


def test_dataset_spec_reads_coco_voc_and_data_yaml(tmp_path, tiny_coco):
    assert dataset_spec(tiny_coco)[0]["type"] == "coco"
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation/>")
    assert dataset_spec(voc) == ({"type": "voc", "root": str(voc)}, None)
    for split in ("train", "val"):
        (tmp_path / "set" / "images" / split).mkdir(parents=True)
        (tmp_path / "set" / "labels" / split).mkdir(parents=True)
    data_yaml = tmp_path / "data.yaml"
    names = {0: "a", 1: "b"}
    data_yaml.write_text(
        yaml.safe_dump(
            {"path": "set", "train": "images/train", "val": "images/val", "names": names}
        )
    )
    train, val = dataset_spec(data_yaml)  # what data=PATH reads
    assert train["type"] == "yolo" and train["classes"] == ["a", "b"]
    assert train["img_dir"].endswith("images/train") and val["img_dir"].endswith("images/val")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="tunedet fit also reads"):
        dataset_spec(empty)


def test_parse_budget_units_and_errors():
    assert fit_module.parse_budget("15m") == 900
    assert fit_module.parse_budget("90s") == 90
    assert fit_module.parse_budget("1.5h") == 5400
    assert fit_module.parse_budget("2") == 120
    with pytest.raises(ValueError, match="duration"):
        fit_module.parse_budget("soon")


def test_the_search_grid_holds_the_open_knobs_with_the_rules_recipe_first():
    """The scale is searched only on whole images (with crops a step costs the same at any
    scale, and short trials would only measure which scale learns fastest), horizontal
    flips only for imagery that is not overhead; the LR never (short trials favour a low
    one)."""
    from tunedet.tuning.fit_search import SCALE_MULT, search_grid

    assert search_grid(overhead=False, search_scale=False) == [{"hflip": True}, {"hflip": False}]
    assert search_grid(overhead=True, search_scale=False) == [{}]  # the rules' recipe alone
    scales = search_grid(overhead=True, search_scale=True)
    assert scales[0] == {"scale_mult": 1.0}
    assert sorted(c["scale_mult"] for c in scales) == sorted(SCALE_MULT)
    both = search_grid(overhead=False, search_scale=True, seed=3)
    assert both[0] == {"scale_mult": 1.0, "hflip": True} and len(both) == 2 * len(SCALE_MULT)
    assert len({tuple(sorted(c.items())) for c in both}) == len(both)  # each combination once
    assert both == search_grid(overhead=False, search_scale=True, seed=3)  # seeded
    orders = {tuple(map(str, search_grid(False, True, seed))) for seed in range(5)}
    assert len(orders) > 1


def test_the_search_enqueues_its_grid_and_trials_take_it_in_order(tmp_path):
    search = FitSearch(
        lambda c: c, tmp_path, None, 0, trial_iters=9, overhead=False, search_scale=False
    )
    waiting = search.study.get_trials(deepcopy=False)
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"hflip": True}, {"hflip": False}]
    for expected in ({"hflip": True}, {"hflip": False}):
        trial = search.study.ask()
        assert search.sample(trial) == expected
        search.study.tell(trial, 0.5)


def test_with_no_knob_open_the_study_is_one_trial_of_the_rules_recipe(tmp_path):
    # Overhead imagery trained as crops: the LR is the finder's, the scale the rule's and
    # every flip is valid. One trial still trains without the held-out images: its weights
    # give the validation figures when the final model trains on every image.
    search = FitSearch(
        lambda c: c, tmp_path, None, 0, trial_iters=9, overhead=True, search_scale=False
    )
    (waiting,) = search.study.get_trials(deepcopy=False)
    assert waiting.system_attrs["fixed_params"] == {}
    trial = search.study.ask()
    assert search.sample(trial) == {}
    search.study.tell(trial, 0.4)
    search.optimize(lambda: 60.0)  # the grid is done: no trial more
    assert len(search.rows()) == 1 and search.best() == ({}, 0.4, 0)
    final = fit_module.final_data_rule(True, 0, chose=False)
    assert final.knobs["final_train"] == "every image" and "had no knob to choose" in final.reason
    assert "served to choose" in fit_module.final_data_rule(True, 0).reason


def test_the_rules_recipe_is_kept_unless_another_trial_beats_it_by_a_margin(tmp_path):
    from tunedet.tuning.fit_search import KEEP_RULES_MARGIN

    search = FitSearch(lambda c: c, tmp_path, None, 0, trial_iters=9, overhead=False)
    values = iter([0.40, 0.40 + KEEP_RULES_MARGIN / 2, 0.30])
    for _ in range(3):  # the grid's first three: the rules' recipe first
        trial = search.study.ask()
        search.sample(trial)
        search.study.tell(trial, next(values))
    assert search.best() == ({"scale_mult": 1.0, "hflip": True}, 0.40, 0)
    trial = search.study.ask()
    chosen = search.sample(trial)
    search.study.tell(trial, 0.40 + 2 * KEEP_RULES_MARGIN)
    assert search.best() == (chosen, pytest.approx(0.40 + 2 * KEEP_RULES_MARGIN), 3)


def test_trials_are_sized_so_the_grid_fills_the_search_time():
    # one trial: all the time; 8 one at a time: 1 + 7 × 0.56 trial lengths
    assert fit_module.trial_length(100.0, 1, 1, 0.1) == 1000
    assert fit_module.trial_length(100.0, 8, 1, 0.1) == int(100 / (4.92 * 0.1))
    # two trials side by side take one trial's wall time, not less
    assert fit_module.trial_length(100.0, 2, 2, 0.1) == 1000
    assert fit_module.trial_length(100.0, 8, 4, 0.1) == int(100 / (4.92 / 4 * 0.1))


def test_fit_cli_refuses_a_bad_budget_in_one_line(tiny_coco, capsys):
    assert main(["fit", str(tiny_coco), "--budget", "soon"]) == 2
    err = capsys.readouterr().err
    assert "tunedet fit: error: --budget 'soon'" in err and len(err.strip().splitlines()) == 1


def test_a_new_search_measures_the_rules_recipe_first_and_a_rerun_continues(tmp_path):
    def make(overhead):
        return FitSearch(lambda c: c, tmp_path, None, 0, trial_iters=9, overhead=overhead)

    first = make(False)
    waiting = first.study.get_trials(deepcopy=False)
    assert len(waiting) == 8
    assert waiting[0].system_attrs["fixed_params"] == {"scale_mult": 1.0, "hflip": True}
    again = make(False)  # the same storage: the study is continued, not enqueued again
    assert len(again.study.get_trials(deepcopy=False)) == 8


def test_search_trials_report_rungs_and_the_best_is_a_complete_trial(tiny_coco, tmp_path):
    from tunedet.config.loader import load_raw

    base = load_raw(fit_module._base_path())
    knobs = dict(TINY_KNOBS)
    spec = {"type": "coco", "ann_file": str(tiny_coco), "img_dir": str(tiny_coco.parent / "images")}
    search = FitSearch(
        lambda chosen: fit_module.recipe_raw(base, {**knobs, **chosen}, spec, spec, ["a", "b"]),
        tmp_path,
        None,
        0,
        trial_iters=3,
        overhead=False,
        log=lambda *_: None,
    )
    budget = iter([60.0, 60.0, 60.0, 0.0])  # three trials, then the search's time is up
    search.optimize(lambda: next(budget))
    rows = search.rows()
    assert len(rows) == 3
    first = next(r for r in rows if r["trial"] == 0)
    assert first["params"] == {"scale_mult": 1.0, "hflip": True}
    trial = search.study.trials[0]
    assert sorted(trial.intermediate_values) == [1, 2, 3] or trial.state.name == "PRUNED"
    assert all(r["state"] != "pruned at 3" for r in rows)  # trained to the end: complete
    best = search.best()
    top = max(r["value"] for r in rows if r["state"] == "complete")
    assert best is not None and (best[1] == top or (best[2] == 0 and top - best[1] <= 0.01))

    # rank agreement: every trial trained again at a given length, Spearman of the ranks
    from tunedet.tuning.fingerprint import fingerprint_from_coco

    gt = json.loads(tiny_coco.read_text())
    result = fit_module.FitResult(
        out=tmp_path,
        rules=[],
        fingerprint=fingerprint_from_coco(gt, ["a", "b"]),
        recipe=tmp_path / "recipe.yaml",
        checkpoint=None,
        metrics={},
        trials=rows,
    )
    from tunedet.tuning.fit_report import fit_record

    (tmp_path / "fit.json").write_text(json.dumps(fit_record(result, 60.0)))
    rank = fit_module.rank_agreement(tmp_path, max_iters=2, log=lambda *_: None)  # the folder
    assert len(rank["runs"]) == 3  # rho is nan when every full-length run ties
    assert (tmp_path / "rank_check" / "0000" / "metrics.json").is_file()
    kept = json.loads((tmp_path / "fit.json").read_text())["rank_agreement"]
    assert kept["runs"] == rank["runs"] and kept["iterations"] == 2
    page = (tmp_path / "report.html").read_text()
    assert "Spearman" in page and "data:image/png;base64," in page  # the scatter, inlined
    assert (tmp_path / "rank_agreement.png").stat().st_size > 1000


def test_search_trials_run_side_by_side_in_worker_processes(tiny_coco, tmp_path):
    import functools
    import time

    from tunedet.config.loader import load_raw

    base = load_raw(fit_module._base_path())
    knobs = dict(TINY_KNOBS)
    spec = {"type": "coco", "ann_file": str(tiny_coco), "img_dir": str(tiny_coco.parent / "images")}
    make_raw = functools.partial(fit_module.trial_raw, base, knobs, spec, spec, ["a", "b"])
    search = FitSearch(make_raw, tmp_path, None, 0, trial_iters=3, overhead=False)
    # max_trials ends it; the deadline only has to outlast a loaded machine's start-up
    search.optimize_side_by_side(time.monotonic() + 3600, workers=2, threads=1, max_trials=3)
    rows = search.rows()
    # two workers that check the count at the same instant may start one trial more
    assert 3 <= len(rows) <= 4
    assert all(r["state"] == "complete" or r["state"].startswith("pruned") for r in rows)
    first = next(r for r in rows if r["trial"] == 0)
    assert first["params"] == {"scale_mult": 1.0, "hflip": True}
    assert len({tuple(sorted(r["params"].items())) for r in rows}) == len(rows)  # no repeats
    for row in rows:
        run = yaml.safe_load(
            (tmp_path / "trials" / f"{row['trial']:04d}" / "config.yaml").read_text()
        )
        assert run["threads"] == 1


def test_tunedet_fit_is_the_pipeline(monkeypatch):
    import tunedet

    seen = {}
    monkeypatch.setattr(fit_module, "fit", lambda data, **kw: seen.update(data=data, **kw) or "ok")
    assert tunedet.fit("d.json", budget="2m", seed=3) == "ok"
    assert seen == {"data": "d.json", "budget": "2m", "out": None, "seed": 3}


def test_fit_cli_rank_check_measures_after_the_budget(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    from tunedet.cli.main import main

    done = SimpleNamespace(out=tmp_path, metrics={"AP": 0.5}, report=tmp_path / "report.html")
    calls = []
    monkeypatch.setattr(fit_module, "fit", lambda *a, **kw: done)
    monkeypatch.setattr(
        fit_module,
        "rank_agreement",
        lambda out: calls.append(out) or {"spearman": 0.8, "runs": [{}] * 5, "iterations": 90},
    )
    assert main(["fit", "d.json", "--budget", "1m"]) == 0
    assert calls == []  # not asked for: no extra trainings
    assert main(["fit", "d.json", "--budget", "1m", "--rank-check"]) == 0
    assert calls == [tmp_path]
    assert "Spearman rho 0.80 over 5 trials trained again for 90 iterations" in (
        capsys.readouterr().out
    )
    spread = {
        "runs": [{}] * 3,
        "AP": {"mean": 0.41, "std": 0.02},
        "AP50": {"mean": 0.6, "std": 0.01},
    }
    monkeypatch.setattr(
        fit_module, "seed_spread", lambda out, runs: calls.append((out, runs)) or spread
    )
    assert main(["fit", "d.json", "--budget", "1m", "--seed-check", "2"]) == 0
    assert calls[-1] == (tmp_path, 2)
    assert "seed spread over 3 runs: AP 0.4100 ± 0.0200, AP50 0.6000 ± 0.0100" in (
        capsys.readouterr().out
    )


def test_lr_finder_rule_runs_on_the_rules_recipe_before_its_length_is_known(tiny_coco):
    # The recipe has no length until the budget is split; the finder's config needs one.
    from tunedet.config.loader import load_raw

    base = load_raw(fit_module._base_path())
    spec = {"type": "coco", "ann_file": str(tiny_coco), "img_dir": str(tiny_coco.parent / "images")}
    clock = fit_module.Clock(1000.0)  # 8 % of it holds the finder's 15 steps at 1 s each
    knobs = {**TINY_KNOBS, "batch_size": 2}
    rule = fit_module.find_lr(base, knobs, spec, spec, ["a", "b"], clock, seconds_per_iter=1.0)
    assert rule.name == "lr"
    assert "no LR finder" not in rule.reason
    assert rule.knobs["lr"] > 0


def test_search_importances_fall_back_to_the_first_rung_over_every_trial(tmp_path):
    # A short budget completes one or two trials; the rest are pruned at the first rung,
    # where every trial has a value: the importances rest on those, and say so.
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    search = FitSearch(lambda chosen: {}, tmp_path, None, 0, trial_iters=9, overhead=False)
    dists = {
        "scale_mult": CategoricalDistribution([0.5, 0.71, 1.0, 1.41]),
        "hflip": CategoricalDistribution([True, False]),
    }
    rng = np.random.default_rng(0)

    def add(scale_mult, hflip, complete):
        first = {0.5: 0.1, 0.71: 0.3, 1.0: 0.6, 1.41: 0.5}[scale_mult]  # only the scale matters
        values = {3: first, 6: first + 0.1, 9: first + 0.2} if complete else {3: first}
        search.study.add_trial(
            create_trial(
                params={"scale_mult": scale_mult, "hflip": hflip},
                distributions=dists,
                value=values[9] if complete else None,
                intermediate_values=values,
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
            )
        )

    add(1.0, True, complete=True)
    add(0.5, False, complete=False)
    found, basis = search.importances()
    assert found == {} and "3 trials" in basis
    for scale_mult in rng.choice([0.5, 0.71, 1.0, 1.41], 10):
        add(float(scale_mult), bool(rng.integers(2)), complete=False)
    found, basis = search.importances()
    assert "12 trials at their first evaluation (3 iterations)" in basis
    assert set(found) == {"scale_mult", "hflip"} and sum(found.values()) == pytest.approx(1.0)
    assert found["scale_mult"] > found["hflip"]
    for scale_mult in (0.5, 1.41):  # three complete trials: they are the basis
        add(scale_mult, True, complete=True)
    found, basis = search.importances()
    assert "3 complete trials of 9 iterations" in basis and set(found) == {"scale_mult", "hflip"}


def test_final_schedule_is_sized_at_the_scale_the_search_chose(tiny_coco, tmp_path, monkeypatch):
    # A larger input from the search makes a step slower: the final schedule's estimate
    # comes from a probe at the chosen scale, not the rules' probe.
    from tunedet.tuning.fit_rules import Rule, lr_rule

    probes = []

    def fake_speed(raw, run_dir, steps=6):
        resize = [t for t in raw["data"]["train_transforms"] if t["type"] == "resize"]
        probes.append(resize[0]["factor"] if resize else 1.0)
        return 0.05 * len(probes)

    chosen = {"scale_mult": 1.41, "hflip": True}
    monkeypatch.setattr(fit_module, "measure_speed", fake_speed)
    monkeypatch.setattr(fit_module, "find_lr", lambda base, *a: lr_rule(None, 0.002, "skipped"))
    monkeypatch.setattr(
        fit_module,
        "run_search",
        lambda *a: fit_module.SearchOutcome(chosen=chosen, rule=Rule("search", chosen, "test")),
    )
    result = fit_module.fit(tiny_coco, budget="4s", out=tmp_path, threads=1, log=lambda *_: None)
    scale = next(r for r in result.rules if r.name == "scale").knobs["scale"]
    assert probes == [pytest.approx(scale, abs=1e-3), pytest.approx(scale * 1.41, abs=1e-3)]
    schedule = next(r for r in result.rules if r.name == "schedule")
    assert "at the measured 0.10 s per iteration" in schedule.reason


def test_tta_flips_follow_the_flips_the_final_recipe_trains_with():
    # The search may turn horizontal flips off (digits: a mirror digit is not a digit);
    # a left-right flip at test time is then not a sample the model was taught.
    assert fit_module.trained_tta_flips({"tta_flips": ["h"], "hflip": True}) == ["h"]
    assert fit_module.trained_tta_flips({"tta_flips": ["h"]}) == ["h"]  # not searched
    assert fit_module.trained_tta_flips({"tta_flips": ["h"], "hflip": False}) == []
    overhead = {"tta_flips": ["h", "v", "hv"], "hflip": False}
    assert fit_module.trained_tta_flips(overhead) == ["v"]
    assert fit_module.check_tta(None, {}, {"tta_flips": []}, {}, {}, [], {}).knobs == {"tta": None}


def test_tta_without_unseen_images_uses_the_trained_flips():
    from tunedet.tuning.fit_rules import trained_flips_tta_rule

    rule = trained_flips_tta_rule(["h", "v", "hv"])
    assert rule.knobs == {"tta": {"flips": ["h", "v", "hv"], "merge": "vote"}}
    assert "h/v/hv" in rule.reason and "4× the inference time" in rule.reason
