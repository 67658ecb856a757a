"""The recipe `train` picks from the data: input size, colour, a given test split, the baseline, int8 agreement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from quantize import data, recipe
from quantize.agreement import agreement_report
from quantize.baseline import compare, fit_baseline


def make_images(root, classes=3, per_class=6, size=(28, 28), grey=True, seed=0):
    """Class c: a bright square at a class-specific place on noise (grey or colour)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (h, w), dtype=np.uint8)
            y0, x0 = (c * h) // (classes + 1), (c * w) // (classes + 1)
            img[y0 : y0 + h // 3, x0 : x0 + w // 3] = 230
            out = img if grey else np.dstack([img, np.roll(img, c + 1, 1), 255 - img])
            cv2.imwrite(str(d / f"{i}.png"), out)
    return root


def test_input_size_and_colour_are_inferred_with_reasons(tmp_path):
    root = make_images(tmp_path / "digits28", per_class=40, size=(28, 28), grey=True)
    labels, items = data.list_folder(root)
    p = recipe.profile(items, len(labels))
    assert (p.median_side, p.grayscale, p.min_per_class) == (28, True, 40)
    r = recipe.choose(p)
    assert (r.input_size, r.grayscale, r.kind, r.arch) == (28, True, "shape", "cnn")
    assert r.augment.flip is False
    assert any("median image side is 28 px" in why for why in r.reasons)
    assert any("R = G = B" in why for why in r.reasons)


def test_large_photos_are_capped_and_small_sets_get_the_small_recipe(tmp_path):
    root = make_images(tmp_path / "big", per_class=5, size=(300, 200), grey=False)
    labels, items = data.list_folder(root)
    r = recipe.choose(recipe.profile(items, len(labels)))
    assert (r.input_size, r.grayscale, r.kind, r.arch) == (recipe.SMALL_MAX_SIDE, False, "small", "kmeans")
    assert r.augment.flip is True and r.augment.cutout == 0  # gentler augmentation for tiny data
    assert any(f"capped at {recipe.MAX_SIDE}" in why and f"lowered to {recipe.SMALL_MAX_SIDE}" in why
               for why in r.reasons)
    explicit = recipe.choose(recipe.profile(items, len(labels)), input_size=40, arch="cnn", epochs=3)
    assert (explicit.input_size, explicit.arch, explicit.epochs) == (40, "cnn", 3)
    assert not any("median" in why for why in explicit.reasons)


def test_a_given_test_folder_is_kept_as_the_test_split(tmp_path):
    make_images(tmp_path / "set" / "train", per_class=10)
    make_images(tmp_path / "set" / "test", per_class=4, seed=1)
    sp = data.split(str(tmp_path / "set"), val_fraction=0.2)
    assert sp.labels == ["c0", "c1", "c2"]
    assert {p.parent.parent.name for p, _ in sp.test} == {"test"} and len(sp.test) == 12
    assert {p.parent.parent.name for p, _ in sp.train + sp.val} == {"train"}
    assert sp.info.counts == {"train": 24, "val": 6, "test": 12}
    assert data.split_from_info(sp.info).test == sp.test
    (tmp_path / "set" / "test" / "c9").mkdir()
    cv2.imwrite(str(tmp_path / "set" / "test" / "c9" / "x.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(data.DataError, match="different classes"):
        data.split(str(tmp_path / "set"))


def test_baseline_scores_the_split_and_warns_only_when_it_wins():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 8, 8, 1))
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.normal(0, 0.3, (300, 8, 8, 1))).astype(np.float32)
    _, res = fit_baseline(x[:200], y[:200], (x[200:250], y[200:250]), (x[250:], y[250:]))
    assert res.test_accuracy > 0.95 and res.val_accuracy > 0.95 and res.components <= 64
    assert compare(res.test_accuracy + 0.01, res) is None
    warning = compare(0.5, res)
    assert warning and "50.00%" in warning and "less accurate than the baseline" in warning


def test_agreement_report_counts_changed_answers_per_true_class():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    fp32 = np.eye(3)[[0, 0, 0, 0, 1, 1, 2, 2]]
    int8 = np.eye(3)[[0, 1, 0, 0, 1, 1, 0, 0]]
    r = agreement_report(int8, fp32, y, ["a", "b", "c"])
    assert r["overall"] == pytest.approx(5 / 8) and r["changed"] == 3
    assert r["per_class"]["a"] == {"n": 4, "agreement": 0.75, "changed": 1}
    assert r["per_class"]["c"]["agreement"] == 0.0 and r["worst"][0] == "c"
