"""``tunedet ablate``: tricks toggled alone relative to the baseline, table and chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunedet.cli.main import main
from tunedet.config.loader import ConfigError, load_config
from tunedet.tuning.ablation import mean_std, resolve_tricks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_builtin_tricks_toggle_relative_to_the_baseline():
    demo = load_config("retinanet/demo")  # warmup, cosine, GIoU, ATSS, hflip on; EMA off
    tricks = {t.name: t for t in resolve_tricks("warmup,cosine,ema,giou,atss,hflip", demo, 300)}
    assert {n: t.change for n, t in tricks.items()} == {
        "warmup": "-warmup",
        "cosine": "-cosine",
        "ema": "+ema",
        "giou": "-giou",
        "atss": "-atss",
        "hflip": "-hflip",
    }
    assert tricks["cosine"].overrides == (
        "schedule.policy={type: multistep, steps: [200, 266], gamma: 0.1}",
    )
    toggled = load_config("retinanet/demo", list(tricks["hflip"].overrides))
    assert [t.type for t in toggled.data.train_transforms] == ["normalize"]
    # On a baseline that already has EMA and no warmup, the same names go the other way.
    other = load_config(
        "retinanet/demo", ["train.ema={decay: 0.99}", "schedule.warmup={type: none}"]
    )
    flipped = {t.name: t.change for t in resolve_tricks("ema,warmup", other, 120)}
    assert flipped == {"ema": "-ema", "warmup": "+warmup"}
    added = load_config("retinanet/demo", list(resolve_tricks("warmup", other, 120)[0].overrides))
    assert (added.schedule.warmup.type, added.schedule.warmup.iters) == ("linear", 10)


def test_mosaic_and_mixup_tricks_add_and_remove_their_transform():
    demo = load_config("retinanet/demo")  # 128-px synthetic images, no mosaic/mixup
    tricks = {t.name: t for t in resolve_tricks("mosaic,mixup", demo, 300)}
    assert {n: t.change for n, t in tricks.items()} == {"mosaic": "+mosaic", "mixup": "+mixup"}
    with_mosaic = load_config("retinanet/demo", list(tricks["mosaic"].overrides))
    first = with_mosaic.data.train_transforms[0]
    assert (first.type, first.p, first.size) == ("mosaic", 0.5, 128)
    assert [t.type for t in with_mosaic.data.train_transforms[1:]] == ["hflip", "normalize"]
    # on a baseline that has MixUp, the trick removes it
    back = resolve_tricks(
        "mixup", load_config("retinanet/demo", list(tricks["mixup"].overrides)), 300
    )
    assert back[0].change == "-mixup"
    removed = load_config("retinanet/demo", list(back[0].overrides))
    assert [t.type for t in removed.data.train_transforms] == ["hflip", "normalize"]


def test_tricks_yaml_and_bad_tricks(tmp_path: Path):
    demo = load_config("retinanet/demo")
    path = tmp_path / "tricks.yaml"
    path.write_text("ema:\nfocal_g1: ['model.cls_loss.gamma=1.0']\n")
    tricks = resolve_tricks(str(path), demo, 100)
    assert [(t.name, t.change) for t in tricks] == [("ema", "+ema"), ("focal_g1", "custom")]
    with pytest.raises(ConfigError, match="unknown built-in trick 'mosaik'"):
        resolve_tricks("warmup,mosaik", demo, 100)
    path.write_text("x: 3\n")
    with pytest.raises(ConfigError, match="trick 'x' must be null"):
        resolve_tricks(str(path), demo, 100)


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx(
        (7 / 3, (((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5)
    )
    assert mean_std([0.5]) == (0.5, 0.0)


def test_ablate_two_tricks_one_seed_writes_table_json_and_chart(tiny_demo, tmp_path: Path, capsys):
    out = tmp_path / "ablate"
    args = ["ablate", "retinanet/demo", *tiny_demo, "--tricks", "warmup,ema", "--seeds", "3"]
    assert main([*args, "--iters", "2", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| config | change | AP | AP50 | Δ AP | Δ AP50 |" in printed
    data = json.loads((out / "ablation.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["baseline", "warmup", "ema"]
    for name in ("warmup", "ema"):
        assert rows[name]["dAP50"] == pytest.approx(rows[name]["AP50"] - rows["baseline"]["AP50"])
    assert {(r["name"], r["seed"]) for r in data["runs"]} == {
        ("baseline", 3),
        ("warmup", 3),
        ("ema", 3),
    }
    # Each run trained its own config: same budget and seed, only the trick's keys differ.
    cfgs = {n: yaml.safe_load((out / n / "seed3" / "config.yaml").read_text()) for n in rows}
    assert all(c["train"]["max_iters"] == 2 and c["seed"] == 3 for c in cfgs.values())
    assert cfgs["baseline"]["schedule"]["warmup"]["type"] == "linear"
    assert cfgs["warmup"]["schedule"]["warmup"]["type"] == "none"
    assert (
        cfgs["baseline"]["train"]["ema"] is None and cfgs["ema"]["train"]["ema"]["decay"] == 0.999
    )
    assert cfgs["ema"]["schedule"] == cfgs["baseline"]["schedule"]
    assert (out / "ablation.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "ablation.md").read_text().count("\n| ") == 4
