"""Detection data: the built-in shapes set, COCO JSON and YOLO txt readers, and their errors for bad annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantize.detect import datasets, synth
from quantize.detect.annotations import AnnotationError, read_folder, write_coco, write_yolo


@pytest.fixture(scope="module")
def small_set():
    return synth.make_set("val", 12)


def test_shapes_are_deterministic_and_within_spec():
    gen = synth.Generator("test")
    a, b = gen.image(3), gen.image(3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    sides, counts = [], []
    for i in range(40):
        rgb, boxes, classes = gen.image(i)
        assert rgb.shape == (160, 160, 3) and rgb.dtype == np.uint8
        assert 1 <= len(boxes) <= 6 and len(boxes) == len(classes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 160).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        sides += list((boxes[:, 2:] - boxes[:, :2]).max(1) / 160)
        counts.append(len(boxes))
    assert min(sides) >= 0.05 and max(sides) <= 0.61  # 8%-60% of the side (anti-aliasing trims a pixel or two)
    assert max(sides) > 0.4 and min(sides) < 0.12 and max(counts) >= 5
    assert not np.array_equal(synth.Generator("train").image(3)[0], a[0])  # the parts never share an image


def test_split_parts_use_disjoint_digit_scans():
    tr, te = synth._digit_bank("train")[0], synth._digit_bank("test")[0]
    assert len(tr) + len(te) + len(synth._digit_bank("val")[0]) == 1797
    assert not any(any(a.shape == b.shape and np.array_equal(a, b) for b in te[:50]) for a in tr[:50])


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_formats_round_trip(tmp_path, small_set, fmt):
    (write_coco if fmt == "coco" else write_yolo)(small_set, tmp_path / fmt)
    ds = read_folder(tmp_path / fmt)
    assert ds.labels == synth.LABELS and len(ds.records) == 12 and not ds.bad
    for got, want in zip(ds.records, small_set.records, strict=True):
        assert np.array_equal(got.classes, want.classes)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        assert np.array_equal(got.load(), want.load())


def test_folder_split_is_seeded_and_disjoint(tmp_path, small_set):
    write_yolo(small_set, tmp_path / "y")
    a = datasets.load_split(str(tmp_path / "y"), seed=1, val_fraction=0.25, test_fraction=0.25)
    b = datasets.load_split(str(tmp_path / "y"), seed=1, val_fraction=0.25, test_fraction=0.25)
    assert a.counts() == {"train": 6, "val": 3, "test": 3}
    assert [r.path for r in a.test.records] == [r.path for r in b.test.records]
    paths = [r.path for p in (a.train, a.val, a.test) for r in p.records]
    assert len(set(paths)) == 12


def _yolo(tmp_path, small_set):
    root = write_yolo(small_set, tmp_path / "y")
    return root, sorted((root / "labels").glob("*.txt"))


@pytest.mark.parametrize("line, words", [
    ("0 0.95 0.5 0.2 0.2", "extends outside the 160x160 image"),
    ("14 0.5 0.5 0.2 0.2", "unknown class 14"),
    ("3 0.5 0.5 0.2", "expected 5 fields"),
    ("3 0.5 half 0.2 0.2", "not numbers"),
    ("3 0.5 0.5 0 0.2", "has no area"),
])
def test_yolo_bad_line_names_file_and_line(tmp_path, small_set, line, words):
    root, labels = _yolo(tmp_path, small_set)
    target = labels[4]
    rows = target.read_text().splitlines()
    target.write_text("\n".join(rows + [line]) + "\n")
    with pytest.raises(AnnotationError, match=words) as e:
        read_folder(root)
    assert e.value.file == str(target) and e.value.line == len(rows) + 1
    assert f"{target} line {len(rows) + 1}:" in str(e.value)


def test_yolo_empty_and_missing_files_and_skip_bad(tmp_path, small_set):
    root, labels = _yolo(tmp_path, small_set)
    labels[0].write_text("")
    labels[1].unlink()
    labels[2].write_text("99 0.5 0.5 0.1 0.1\n")
    with pytest.raises(AnnotationError, match="empty label file"):
        read_folder(root)
    ds = read_folder(root, skip_bad=True)
    assert len(ds.records) == 9 and len(ds.bad) == 3
    reasons = sorted(e.reason.split(" (")[0] for e in ds.bad)
    assert reasons == ["empty label file", "label file is missing for this image", "unknown class 99"]


def test_coco_bad_annotations_name_the_line(tmp_path, small_set):
    path = write_coco(small_set, tmp_path / "c")
    doc = json.loads(path.read_text())
    doc["annotations"][5]["bbox"] = [150, 10, 30, 20]  # past the right edge of a 160-wide image
    path.write_text(json.dumps(doc, indent=1))
    lines = path.read_text().splitlines()
    bbox_lines = [i + 1 for i, ln in enumerate(lines) if '"bbox"' in ln]
    with pytest.raises(AnnotationError, match="annotation id 6: box .* extends outside the 160x160 image") as e:
        read_folder(tmp_path / "c")
    assert e.value.line == bbox_lines[5] and e.value.file == str(path)
    other = next(k for k, a in enumerate(doc["annotations"]) if a["image_id"] != doc["annotations"][5]["image_id"])
    doc["annotations"][other]["category_id"] = 77
    path.write_text(json.dumps(doc, indent=1))
    ds = read_folder(tmp_path / "c", skip_bad=True)
    assert len(ds.bad) == 2 and any("unknown category_id 77" in str(b) for b in ds.bad)
    assert len(ds.records) == 10  # one bad annotation leaves out its whole image


def test_coco_file_that_is_not_coco(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ann.json").write_text("{\n  \"images\": [\n")
    with pytest.raises(AnnotationError, match="ann.json line 3: not valid JSON"):
        read_folder(tmp_path / "d")
    (tmp_path / "d" / "ann.json").write_text("")
    with pytest.raises(AnnotationError, match="empty annotation file"):
        read_folder(tmp_path / "d")
