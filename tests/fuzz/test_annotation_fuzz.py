"""Hostile annotation files never produce a traceback: random and mutated COCO JSON,
Pascal VOC XML and YOLO txt files (written to a folder beside two real images) are
read by the dataset readers, every sample is loaded and the COCO ground truth built;
the only failures allowed are one-line ``ValueError``s (``DataError``) or
``FileNotFoundError``s, the ones the CLI turns into ``error: ...`` and exit code 2.
Detection files for ``tunedet evaluate`` are fuzzed through the CLI itself.
"""

from __future__ import annotations

import copy
import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tunedet.cli.main import main
from tunedet.data.coco import CocoDataset
from tunedet.data.voc import VOCDataset
from tunedet.data.yolo import YOLODataset

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SIZES = {"a": (24, 32), "b": (40, 20)}  # stem: (h, w)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["a.png", "b.png", "cat", "dog", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for stem, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{stem}.png"
        )
    return folder


def exercise(dataset) -> None:
    """What training and evaluation do with a dataset: every sample and the GT."""
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["boxes"].shape == (len(sample["labels"]), 4)
    gt = dataset.coco_ground_truth()
    json.dumps(gt)


def read_or_one_line_error(read, names: list[str]) -> None:
    try:
        exercise(read())
    except (ValueError, FileNotFoundError) as err:
        message = str(err).strip()
        assert message and "\n" not in message, repr(message)
        assert any(name in message for name in names), message


def valid_coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 32, "height": 24},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 40},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 30], "area": 150},
        ],
    }


def mutate(tree, path: list, value, delete: bool):
    """Set (or delete) the node at ``path`` (keys/indices, taken modulo what exists)."""
    node = tree
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node, key=str)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            return tree
    if isinstance(node, dict) and node:
        key = sorted(node, key=str)[path[-1] % len(node)]
        if delete:
            del node[key]
        else:
            node[key] = value
    elif isinstance(node, list) and node:
        if delete:
            node.pop(path[-1] % len(node))
        else:
            node[path[-1] % len(node)] = value
    return tree


mutations = st.lists(
    st.tuples(st.lists(st.integers(0, 10), min_size=1, max_size=4), json_values, st.booleans()),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(
    content=st.one_of(
        mutations.map(lambda ms: ("mutated", ms)),
        json_values.map(lambda v: ("json", v)),
        st.binary(max_size=64).map(lambda b: ("bytes", b)),
    ),
    strict=st.booleans(),
    classes=st.sampled_from([None, ["dog"], ["cat", "dog", "bird"]]),
)
def test_fuzzed_coco_json_reads_or_fails_in_one_line(content, strict, classes, images, tmp_path):
    ann = tmp_path / "instances.json"
    kind, payload = content
    if kind == "mutated":
        data = valid_coco()
        for path, value, delete in payload:
            data = mutate(data, path, copy.deepcopy(value), delete)
        ann.write_text(json.dumps(data))
    elif kind == "json":
        ann.write_text(json.dumps(payload))
    else:
        ann.write_bytes(payload)
    read_or_one_line_error(
        lambda: CocoDataset(str(ann), str(images), strict=strict, classes=classes),
        [str(ann), str(images), "a.png", "b.png"],
    )


VOC = """<annotation>
  <filename>{stem}.png</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  <object><name>cat</name><difficult>0</difficult>
    <bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax><ymax>11</ymax></bndbox></object>
  <object><name>dog</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>6</xmax><ymax>19</ymax></bndbox></object>
</annotation>
"""

xml_text = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["nan", "inf", "-1", "1e400", "0", "99999", " 5 ", "<", "&amp;", "]]>"]),
)


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 40), xml_text), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    strict=st.booleans(),
)
def test_fuzzed_voc_xml_reads_or_fails_in_one_line(edits, cut, strict, images, tmp_path):
    root = tmp_path / "voc"
    root.mkdir(exist_ok=True)
    names = []
    for stem, (h, w) in SIZES.items():
        (root / f"{stem}.png").write_bytes((images / f"{stem}.png").read_bytes())
        text = VOC.format(stem=stem, w=w, h=h)
        for start, length, replacement in edits:  # overwrite a random span
            at = start % len(text)
            text = text[:at] + replacement + text[at + length :]
        if cut is not None and stem == "b":
            text = text[:cut]
        (root / f"{stem}.xml").write_text(text, encoding="utf-8", errors="surrogatepass")
        names.append(str(root / f"{stem}.xml"))
    read_or_one_line_error(lambda: VOCDataset(str(root), strict=strict), [str(root), *names])


yolo_token = st.one_of(
    st.integers(-2, 4).map(str),
    st.floats(-2, 2, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x1", "1.5", "", "cat", "½"]),
    st.text(string.printable, max_size=4),
)
yolo_line = st.lists(yolo_token, max_size=7).map(" ".join)


@FUZZ
@given(
    labels=st.dictionaries(
        st.sampled_from(["a", "b", "c"]), st.lists(yolo_line, max_size=5).map("\n".join)
    ),
    raw=st.one_of(st.none(), st.binary(max_size=32)),
    strict=st.booleans(),
)
def test_fuzzed_yolo_txt_reads_or_fails_in_one_line(labels, raw, strict, images, tmp_path):
    folder = tmp_path / "yolo"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for stem in SIZES:
        (folder / "images" / f"{stem}.png").write_bytes((images / f"{stem}.png").read_bytes())
    for old in (folder / "labels").glob("*.txt"):
        old.unlink()
    for stem, text in labels.items():
        (folder / "labels" / f"{stem}.txt").write_text(text)
    if raw is not None:
        (folder / "labels" / "a.txt").write_bytes(raw)
    read_or_one_line_error(
        lambda: YOLODataset(str(folder / "images"), ["cat", "dog"], strict=strict),
        [str(folder)],
    )


detection = st.fixed_dictionaries(
    {},
    optional={
        "image_id": st.one_of(st.sampled_from([1, 2, 3]), json_scalars),
        "category_id": st.one_of(st.sampled_from([1, 7, 9]), json_scalars),
        "bbox": st.one_of(st.lists(st.floats(-5, 50), min_size=4, max_size=4), json_values),
        "score": st.one_of(st.floats(0, 1), json_scalars),
    },
)


@FUZZ
@given(
    dets=st.one_of(st.lists(detection, max_size=5), json_values),
    metric=st.sampled_from(["coco", "voc07", "voc12"]),
)
def test_fuzzed_detection_files_evaluate_or_fail_in_one_line(dets, metric, tmp_path, capsys):
    gt, det_file = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(valid_coco()))
    det_file.write_text(json.dumps(dets))
    code = main(["evaluate", "--gt", str(gt), "--dets", str(det_file), "--metric", metric])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("tunedet evaluate: error: ") and str(det_file) in lines[-1]
