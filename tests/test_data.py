"""ImageFolder loading, the seeded stratified split, and the built-in digits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_sdk.preprocess import InputSpec, PreprocessSpec
from quantize import data


def make_folder(root, counts, size=12, bad=0):
    rng = np.random.default_rng(0)
    for c, n in counts.items():
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for i in range(bad):
            (d / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 40, "b": 20, "c": 20})
    s1 = data.split(str(root), seed=3)
    s2 = data.split(str(root), seed=3)
    s3 = data.split(str(root), seed=4)
    assert s1.labels == ["a", "b", "c"]
    assert s1.test == s2.test and s1.val == s2.val
    assert s1.test != s3.test
    all_paths = [p for part in (s1.train, s1.val, s1.test) for p, _ in part]
    assert len(all_paths) == len(set(all_paths)) == 80
    test_counts = np.bincount([y for _, y in s1.test], minlength=3)
    assert test_counts.tolist() == [6, 3, 3]  # 15% of each class
    assert s1.info.counts == {"train": 56, "val": 12, "test": 12}
    assert data.split_from_info(s1.info).test == s1.test


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "b": 5}, bad=2)
    s = data.split(str(root), val_fraction=0, test_fraction=0)
    arr = data.load_arrays(s.train, InputSpec(height=8, width=8), PreprocessSpec(), progress=False)
    assert arr.x.shape == (10, 8, 8, 3) and len(arr.y) == 10
    assert len(arr.skipped) == 4 and all("broken" in p for p, _ in arr.skipped)


@pytest.mark.parametrize("counts, words", [({"a": 3}, "need at least 2"), ({}, "need at least 2"),
                                           ({"a": 3, "b": 3, "c": 0}, "with no images: c")])
def test_folders_that_cannot_train(tmp_path, counts, words):
    root = tmp_path / "imgs"
    root.mkdir()
    for c in counts:
        (root / c).mkdir()
    for c, n in counts.items():
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(data.DataError, match=words):
        data.split(str(root))


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match="no such folder"):
        data.split(str(tmp_path / "nope"))


def test_digits_builtin_is_real_handwriting(digits_dir):
    labels, items = data.list_folder(digits_dir)
    assert labels == [str(i) for i in range(10)]
    assert len(items) == 1797
    img = cv2.imread(str(items[0][0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32) and img.max() > 200 and img.min() == 0


def test_stratified_sample_keeps_every_class():
    items = [(f"p{i}", i % 3) for i in range(300)]
    sample = data.stratified_sample(items, 30, seed=1)
    assert len(sample) == 30
    assert np.bincount([y for _, y in sample]).tolist() == [10, 10, 10]
