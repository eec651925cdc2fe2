"""Config loading: schema validation, _base_ inheritance, overrides, error messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from tunedet.config.loader import (
    ConfigError,
    apply_override,
    config_to_yaml,
    load_config,
    load_raw,
    merge,
)

DEMO = "retinanet/demo"


def test_demo_config_validates_and_fills_defaults():
    cfg = load_config(DEMO)
    assert cfg.model.type == "retinanet"
    assert cfg.eval.metric == "coco"
    assert cfg.model.cls_loss.alpha == pytest.approx(0.25)


def test_typo_in_override_names_dotted_path_and_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["optim.lrr=0.1"])
    message = str(info.value)
    assert "optim.lrr" in message
    assert "did you mean 'lr'" in message
    assert "\n" not in message


def test_unknown_component_type_suggests_closest_name():
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["model.assigner={type: atts}"])
    message = str(info.value)
    assert "model.assigner.type" in message
    assert "'atts'" in message
    assert "did you mean 'atss'" in message
    assert "max_iou" in message  # the choices are listed


def test_wrong_type_and_out_of_range_value_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        load_config(DEMO, ["data.batch_size=zero"])
    with pytest.raises(ConfigError, match=r"data\.batch_size.*greater than or equal to 1"):
        load_config(DEMO, ["data.batch_size=0"])


def test_unknown_key_inside_component_is_rejected():
    with pytest.raises(ConfigError, match=r"model\.assigner\.topkk.*did you mean 'topk'"):
        load_config(DEMO, ["model.assigner.topkk=3"])


def test_override_changes_value_and_parses_yaml_types():
    cfg = load_config(DEMO, ["optim.lr=0.02", "data.batch_size=4", "train.progress=false"])
    assert cfg.optim.lr == pytest.approx(0.02)
    assert cfg.data.batch_size == 4
    assert cfg.train.progress is False


def test_type_change_by_override_replaces_component_parameters():
    raw = {"model": {"assigner": {"type": "max_iou", "pos_iou_thr": 0.5}}}
    apply_override(raw, "model.assigner.type=atss")
    assert raw["model"]["assigner"] == {"type": "atss"}
    cfg = load_config(DEMO, ["model.assigner.type=max_iou"])
    assert cfg.model.assigner.type == "max_iou"
    assert cfg.model.assigner.pos_iou_thr == pytest.approx(0.5)


def test_merge_replaces_lists_and_type_changed_dicts():
    base = {"a": [1, 2], "b": {"type": "x", "p": 1}, "c": {"d": 1, "e": 2}}
    update = {"a": [3], "b": {"type": "y"}, "c": {"e": 5}}
    assert merge(base, update) == {"a": [3], "b": {"type": "y"}, "c": {"d": 1, "e": 5}}


def test_base_inheritance_is_deep_merged(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"seed": 3, "train": {"max_iters": 10, "log_every": 5}})
    )
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {max_iters: 20}\n")
    raw = load_raw(tmp_path / "child.yaml")
    assert raw == {"seed": 3, "train": {"max_iters": 20, "log_every": 5}}


def test_base_cycle_and_missing_base_are_reported(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_raw(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_raw(tmp_path / "c.yaml")


def test_invalid_yaml_error_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ntrain: {max_iters: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_unknown_builtin_config_name_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'retinanet/demo'"):
        load_config("retinanet/dmeo")


def test_resolved_config_reloads_to_the_same_config(tmp_path: Path):
    cfg = load_config(DEMO, ["optim.lr=0.003"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    again = load_config(path)
    assert again.model_dump() == cfg.model_dump()


def test_readme_config_reference_is_up_to_date():
    from tunedet.config.reference import BEGIN, END, reference_markdown

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    current = readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)]
    assert current.strip() == reference_markdown().strip(), (
        "README's config reference is stale: run python -m tunedet.config.reference --write README.md"
    )


def test_base_accepts_a_builtin_name_and_refuses_a_non_name(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("_base_: retinanet/demo\noptim: {lr: 0.003}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.model.type == "retinanet" and cfg.optim.lr == pytest.approx(0.003)
    (tmp_path / "five.yaml").write_text("_base_: 5\n")
    with pytest.raises(ConfigError, match=r"five\.yaml: _base_ must be .*got 5"):
        load_config(tmp_path / "five.yaml")
    (tmp_path / "typo.yaml").write_text("_base_: retinanet/dmeo\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: _base_ 'retinanet/dmeo' not found.*"):
        load_config(tmp_path / "typo.yaml")


def test_relative_data_paths_resolve_against_the_yaml_that_names_them(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    (project / "trees").mkdir(parents=True)
    (project / "configs").mkdir()
    (project / "configs" / "base.yaml").write_text(
        "_base_: retinanet/demo\n"
        "data:\n  train: {type: voc, root: ../trees, classes: [tree]}\n"
        "  val: {type: voc, root: ../trees}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "child.yaml").write_text(
        "_base_: ../project/configs/base.yaml\ndata: {val: {root: held_out}}\n"
    )
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(tmp_path / "elsewhere" / "child.yaml")
    assert cfg.data.train.root == str(project / "trees")  # named by base.yaml
    assert cfg.data.val.root == str(tmp_path / "elsewhere" / "held_out")  # named by child.yaml
    assert cfg.data.val.classes == ["tree"]  # not repeated per split
    assert cfg.model.num_classes == 1  # from the data
    # an override names a path from the current directory
    cfg = load_config(tmp_path / "elsewhere" / "child.yaml", ["data.val.root=x"])
    assert cfg.data.val.root == "x"


def test_shipped_trees_config_finds_its_data_from_any_directory(tmp_path: Path, monkeypatch):
    trees = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "trees"
    if not trees.is_dir():
        pytest.skip(f"the trees data is not beside the repository ({trees} missing)")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("trees/retinanet_tiles")
    assert Path(cfg.data.train.root) == trees.resolve()


def test_yaml_alias_bomb_is_refused_fast_in_one_short_line(tmp_path: Path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 600  # 9^9 = 387M strings once expanded
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(bomb)
    assert time.perf_counter() - started < 2
    message = str(info.value)
    assert "bomb.yaml: expands to more than" in message and len(message) < 200


def test_deeply_nested_yaml_and_override_are_refused_in_one_line(tmp_path: Path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: nested deeper than"):
        load_config(deep)
    with pytest.raises(ConfigError, match="override 'seed': nested deeper than"):
        load_config(DEMO, ["seed=" + "[" * 80 + "]" * 80])


def test_long_invalid_value_is_shortened_in_the_error():
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["seed=" + "x" * 5000])
    assert "seed:" in str(info.value) and len(str(info.value)) < 300


def test_device_is_checked_at_load():
    with pytest.raises(ConfigError, match=r"device: not a device: 'gpu7'"):
        load_config(DEMO, ["device=gpu7"])
    assert load_config(DEMO, ["device=cpu"]).device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device: 'cuda': CUDA is not available"):
            load_config(DEMO, ["device=cuda"])
    else:
        with pytest.raises(ConfigError, match=r"device: 'cuda:99': this machine has"):
            load_config(DEMO, ["device=cuda:99"])


def test_num_classes_is_taken_from_the_data_and_a_contradiction_refused():
    cfg = load_config(DEMO, ["data.train.num_classes=2"])
    assert cfg.model.num_classes == 2
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["model.num_classes=2"])  # the demo's synthetic data has 3
    message = str(info.value)
    assert "model.num_classes is 2 but data.train (synthetic) has 3 classes" in message
    with pytest.raises(ConfigError, match=r"model\.num_classes: .*less than or equal to 100000"):
        load_config(DEMO, ["model.num_classes=100000000"])  # refused before any allocation


def test_a_dotted_override_into_a_default_component_keeps_its_type_and_defaults():
    """``model.roi_head.cls_loss`` is Faster R-CNN's default ``softmax_ce``: one key of it
    overridden keeps that type, and the sampler keeps its other default settings."""
    cfg = load_config(
        "faster_rcnn/demo",
        ["model.roi_head.cls_loss.label_smoothing=0.2", "model.roi_head.sampler.num=128"],
    )
    assert cfg.model.roi_head.cls_loss.type == "softmax_ce"
    assert cfg.model.roi_head.cls_loss.label_smoothing == 0.2
    sampler = cfg.model.roi_head.sampler
    assert (sampler.type, sampler.num, sampler.pos_fraction) == ("random", 128, 0.25)
    assert sampler.add_gt_as_proposals is True  # the head's default, not the sampler's own
    with pytest.raises(ConfigError, match=r"model\.roi_head\.sampler\.foo: unknown key"):
        load_config("faster_rcnn/demo", ["model.roi_head.sampler.foo=1"])
