"""Search-space files: parsing, one-line errors naming the key, conditional sampling."""

from __future__ import annotations

import optuna
import pytest

from tunedet.config.loader import ConfigError, load_config
from tunedet.tuning.space import (
    check_against_config,
    load_space,
    overrides_for,
    params_from_optuna,
    parse_space,
)

SPACE = {
    "metric": "AP50",
    "params": {
        "optim.type": {"choice": ["adamw", "sgd"]},
        "optim.lr": {"float": [1e-4, 1e-1], "log": True},
        "optim.momentum": {"float": [0.8, 0.95], "when": {"optim.type": "sgd"}},
        "model.assigner.topk": {"int": [5, 13], "step": 2},
        "schedule.warmup": {"choice": [{"type": "none"}, {"type": "linear", "iters": 50}]},
    },
}


def test_space_parses_kinds_bounds_and_conditions():
    space = parse_space(SPACE)
    assert space.metric == "AP50"
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {
        "optim.type": "choice",
        "optim.lr": "float",
        "optim.momentum": "float",
        "model.assigner.topk": "int",
        "schedule.warmup": "choice",
    }
    lr = space.params[1]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-1, True)
    assert space.params[2].when == {"optim.type": ("sgd",)}
    assert space.params[3].grid_values() == [5, 7, 9, 11, 13]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"optim.lr": {"float": [0.1, 0.01]}}, "params.optim.lr: low must be below high"),
        (
            {"optim.lr": {"float": [0.0, 0.1], "log": True}},
            "params.optim.lr: a log range needs low > 0",
        ),
        ({"optim.lr": {"float": [0.1]}}, "params.optim.lr: float must be [low, high]"),
        (
            {"optim.lr": {"float": [0.01, 0.1], "int": [1, 2]}},
            "params.optim.lr: give exactly one of",
        ),
        ({"optim.lr": {"floot": [0.01, 0.1]}}, "params.optim.lr: unknown setting 'floot'"),
        ({"optim.lr": 0.01}, "params.optim.lr: expected a mapping"),
        (
            {"train.max_iters": {"int": [1.5, 3]}},
            "params.train.max_iters: int bounds must be integers",
        ),
        ({"optim.type": {"choice": []}}, "params.optim.type: choice must be a non-empty list"),
        (
            {"optim.type": {"choice": ["sgd", "sgd"]}},
            "params.optim.type: choice lists a value twice",
        ),
        (
            {"optim.momentum": {"float": [0.8, 0.9], "when": {"optim.type": "sgd"}}},
            "params.optim.momentum: when refers to 'optim.type', which is not a parameter listed before",
        ),
        (
            {
                "optim.type": {"choice": ["adamw", "sgd"]},
                "optim.momentum": {"float": [0.8, 0.9], "when": {"optim.type": "adam"}},
            },
            "params.optim.momentum: when optim.type='adam' is not one of its choices",
        ),
        ({"optim lr": {"float": [0.01, 0.1]}}, "params.optim lr: not a dotted config key"),
    ],
)
def test_bad_space_fails_with_one_line_naming_the_key(params, message):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml")
    text = str(error.value)
    assert text.startswith("space.yaml: ") and message in text and "\n" not in text


def test_bad_top_level_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'parms'"):
        parse_space({"parms": {}})
    with pytest.raises(ConfigError, match="'params' must be a non-empty mapping"):
        parse_space({"metric": "AP"})
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  optim.lr: {float: [0.1, 0.01]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: params\.optim\.lr: low must be below high"):
        load_space(bad)


def test_conditional_key_is_sampled_only_when_its_condition_holds():
    space = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(30):
        trial = study.ask()
        chosen = space.sample(trial)
        study.tell(trial, 0.0)
        seen.add(chosen["optim.type"])
        assert ("optim.momentum" in chosen) == (chosen["optim.type"] == "sgd")
        assert 1e-4 <= chosen["optim.lr"] <= 1e-1
        assert chosen["model.assigner.topk"] in (5, 7, 9, 11, 13)
        assert chosen["schedule.warmup"] in ({"type": "none"}, {"type": "linear", "iters": 50})
        # The stored params decode back to the sampled values, in file order.
        assert params_from_optuna(space, trial.params) == chosen
        cfg = load_config("retinanet/demo", overrides_for(chosen))
        assert cfg.optim.type == chosen["optim.type"] and cfg.optim.lr == chosen["optim.lr"]
        assert cfg.schedule.warmup.type == chosen["schedule.warmup"]["type"]
        if "optim.momentum" in chosen:
            assert cfg.optim.momentum == chosen["optim.momentum"]
    assert seen == {"adamw", "sgd"}


def test_grid_sampler_space_needs_a_step_on_floats():
    space = parse_space({"params": {"optim.lr": {"float": [0.01, 0.03], "step": 0.01}}})
    assert space.grid() == {"optim.lr": pytest.approx([0.01, 0.02, 0.03])}
    with pytest.raises(ConfigError, match="optim.lr: the grid sampler needs 'step'"):
        parse_space({"params": {"optim.lr": {"float": [0.01, 0.03]}}}).grid()


def test_keys_unknown_to_the_config_fail_before_training():
    space = parse_space({"params": {"optim.lrr": {"float": [0.01, 0.1]}}}, "s.yaml")
    with pytest.raises(ConfigError, match="s.yaml: a sampled config is invalid: .*optim.lrr"):
        check_against_config(space, "retinanet/demo", [])


def test_builtin_example_spaces_load_and_fit_the_demo_recipe():
    for name in ("tuning/demo_short", "tuning/optimizer"):
        check_against_config(load_space(name), "retinanet/demo", [])
