"""Hostile configs never produce a traceback: random dotted overrides (known and
unknown keys, values of every YAML type) and random YAML files go through the CLI,
which either runs or prints one line ``tunedet CMD: error: ...`` and exits 2.

``tunedet eval CONFIG --checkpoint <missing>`` loads and validates the config and
builds the model before it needs the checkpoint, so every example ends with an
error (the missing file at the latest) in milliseconds. Examples are derandomised
so CI runs the same inputs every time; raise ``FUZZ_EXAMPLES`` to search longer.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunedet.cli.main import main

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

KNOWN_KEYS = [
    "seed", "device", "threads", "work_dir", "deterministic",
    "model", "model.type", "model.num_classes", "model.score_thr", "model.max_dets",
    "model.backbone", "model.backbone.type", "model.backbone.widths",
    "model.backbone.out_indices", "model.backbone.norm", "model.backbone.frozen_stages",
    "model.neck", "model.neck.out_channels", "model.neck.num_outs",
    "model.head", "model.head.type", "model.head.feat_channels", "model.head.norm",
    "model.head.stacked_convs", "model.anchor_generator.strides",
    "model.anchor_generator.ratios", "model.anchor_generator.octave_base_scale",
    "model.assigner", "model.assigner.type", "model.assigner.topk",
    "model.sampler.type", "model.cls_loss", "model.cls_loss.gamma", "model.box_loss.type",
    "model.box_coder.weights",
    "data", "data.train", "data.train.type", "data.train.num_images", "data.val",
    "data.val.image_size", "data.batch_size", "data.train_transforms", "data.val_transforms",
    "data.size_divisor", "data.sampler.repeat_threshold",
    "optim", "optim.type", "optim.lr", "optim.momentum", "optim.param_multipliers",
    "schedule", "schedule.warmup", "schedule.warmup.iters", "schedule.policy",
    "schedule.policy.type", "schedule.policy.steps",
    "train", "train.max_iters", "train.epochs", "train.max_minutes", "train.ema",
    "train.ema.decay", "train.amp", "train.sync_bn", "train.on_nonfinite", "train.accumulate",
    "train.early_stop", "train.distill", "eval", "eval.metric", "eval.score_thr",
]  # fmt: skip

identifier = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)
unknown_key = st.lists(identifier, min_size=1, max_size=4).map(".".join)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), unknown_key, st.text(max_size=12))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["retinanet", "atss", "gn", "bn", "sgd", "cosine", "coco", "fp16", "auto"]),
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(identifier, st.just("type")), inner, max_size=3),
    ),
    max_leaves=8,
)


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...")


values_text = st.one_of(yaml_values.map(as_yaml), st.text(max_size=16))
overrides = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, values_text),
    st.text(max_size=16).filter(lambda s: not s.startswith("-")),
)


def assert_one_line_error(code: int, err: str, command: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"tunedet {command}: error: "), err
    assert len(lines[-1]) > len(f"tunedet {command}: error: ")


@FUZZ
@given(extra=st.lists(overrides, max_size=4))
def test_random_overrides_give_a_one_line_error(extra, capsys, tmp_path: Path):
    missing = tmp_path / "missing.pt"
    tiny = ["data.train.num_images=4", "data.val.num_images=2", "threads=1"]
    code = main(["eval", "retinanet/demo", *tiny, *extra, "--checkpoint", str(missing)])
    assert_one_line_error(code, capsys.readouterr().err, "eval")


def _set(tree: dict, path: list[str], value) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


DEMO = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "src/tunedet/configs/retinanet/demo.yaml").read_text()
)


@FUZZ
@given(
    changes=st.lists(
        st.tuples(st.one_of(st.sampled_from(KNOWN_KEYS), unknown_key), yaml_values), max_size=3
    ),
    drop=st.lists(st.sampled_from(["model", "data", "train", "optim", "data.train"]), max_size=1),
)
def test_mutated_yaml_files_give_a_one_line_error(changes, drop, capsys, tmp_path: Path):
    tree = yaml.safe_load(yaml.safe_dump(DEMO))
    for key, value in changes:
        _set(tree, key.split("."), value)
    for key in drop:
        parts = key.split(".")
        parent = tree if len(parts) == 1 else tree.get(parts[0])
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)
    path = tmp_path / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(tree))
    code = main(["eval", str(path), "--checkpoint", str(tmp_path / "missing.pt")])
    assert_one_line_error(code, capsys.readouterr().err, "eval")


@FUZZ
@given(text=st.one_of(st.text(max_size=200), yaml_values.map(yaml.safe_dump)))
def test_random_yaml_text_gives_a_one_line_error_in_train(text, capsys, tmp_path: Path):
    path = tmp_path / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code = main(["train", str(path), "--work-dir", str(tmp_path / "run")])
    assert_one_line_error(code, capsys.readouterr().err, "train")
