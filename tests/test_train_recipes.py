"""`train` end to end on small made-up data: distillation, the int8 size budget, the small-data model, the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.bundle import load_bundle
from tests.test_recipe import make_images

pytestmark = pytest.mark.slow


def _colour_blobs(n=90, size=16, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 0.2, (n, size, size, 3)).astype(np.float32)
    x[np.arange(n), :, :, y] += 0.7  # class c: channel c is bright
    return x, y


def test_soft_targets_follow_the_temperature():
    from quantize.fit import soft_targets

    z = np.array([[2.0, 0.0, -2.0]])
    cold, hot = soft_targets(z, 1.0), soft_targets(z, 8.0)
    assert np.allclose(cold.sum(), 1) and np.allclose(hot.sum(), 1)
    assert np.allclose(cold, np.exp(z) / np.exp(z).sum())
    assert hot.max() < cold.max() and hot.argmax() == cold.argmax()  # softer, same order


@pytest.mark.parametrize("soft_weight, follows", [(1.0, "teacher"), (0.0, "labels")])
def test_the_student_learns_what_the_soft_targets_say(soft_weight, follows):
    """A teacher that disagrees with the labels (it says class+1): the student follows whichever the loss weights."""
    import keras

    from quantize.augment import AugmentSpec
    from quantize.fit import FitOptions, fit, predict_logits, soft_targets
    from quantize.models import build

    keras.utils.set_random_seed(0)
    x, y = _colour_blobs()
    teacher_says = (y + 1) % 3
    soft = soft_targets(np.eye(3)[teacher_says] * 6.0, 2.0)
    student = build("cnn", x.shape[1:], 3, 0.25)
    opts = FitOptions(epochs=12, batch_size=16, lr=0.05, temperature=2.0, soft_weight=soft_weight, progress=False)
    rep = fit(student, x, y, None, AugmentSpec(policy="none", flip=False), opts, soft=soft)
    pred = predict_logits(student, x).argmax(1)
    target = teacher_says if follows == "teacher" else y
    assert (pred == target).mean() >= 0.9, (rep["history"], (pred == target).mean())


def test_widest_edge_model_within_the_budget_fits_and_a_wider_one_does_not():
    from quantize.budget import BudgetError, int8_size, widest_within
    from quantize.models import build

    fit_ = widest_within("resnet_edge", (16, 16, 3), 5, 48 * 1024)
    assert fit_.int8_bytes <= 48 * 1024 and fit_.conversions <= 4
    assert int8_size(build("resnet_edge", (16, 16, 3), 5, fit_.width * 1.25)) > 48 * 1024
    with pytest.raises(BudgetError, match="raise --edge-max-kb"):
        widest_within("resnet_edge", (16, 16, 3), 5, 2 * 1024)


def test_train_distils_a_budgeted_edge_model_and_quantize_reports_agreement_by_class(tmp_path):
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    root = make_images(tmp_path / "imgs", classes=3, per_class=14, size=(20, 20), grey=False)
    b = train(TrainConfig(data=str(root), out=str(tmp_path / "b"), input_size=16, arch="cnn", width=1.0,
                          edge_max_kb=40, epochs=3, edge_epochs=3, progress=False))
    rep = b.manifest.reports["train"]
    assert set(b.manifest.models) == {"cloud", "edge_source"}
    assert rep["edge_plan"]["role"] == "edge_source" and rep["edge_plan"]["arch"] == "resnet_edge"
    assert rep["edge_source"]["distilled"] is True and rep["edge_source"]["temperature"] == 4.0
    assert rep["cloud"]["flip_average"] is True  # photos: the cloud model averages the image and its mirror
    assert rep["baseline"]["test_accuracy"] is not None and "warnings" in rep["baseline"]
    q = quantize_bundle(b.path, progress=False, max_drop=100.0, latency_runs=5)
    assert q["size_bytes"]["tflite_int8"] <= 40 * 1024
    assert load_bundle(b.path).model_path("edge").stat().st_size <= 40 * 1024
    by_class = q["test"]["agreement_int8_vs_fp32_by_class"]
    assert set(by_class["per_class"]) == {"c0", "c1", "c2"}
    assert by_class["overall"] == pytest.approx(q["test"]["agreement_int8_vs_fp32"])
    assert sum(v["n"] for v in by_class["per_class"].values()) == q["test"]["n"]


def test_small_data_gets_the_kmeans_model_which_converts_to_int8(tmp_path):
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    root = make_images(tmp_path / "few", classes=4, per_class=8, size=(24, 24), grey=False)
    b = train(TrainConfig(data=str(root), out=str(tmp_path / "b"), progress=False))
    rep = b.manifest.reports["train"]
    assert rep["recipe"]["kind"] == "small" and rep["cloud"]["arch"] == "kmeans"
    assert rep["cloud"]["features"] == 8 * 256 and rep["cloud"]["train_accuracy"] == 1.0
    assert rep["edge_plan"]["role"] == "cloud" and set(b.manifest.models) == {"cloud"}
    assert b.manifest.input.height == 24  # the median side of the data
    q = quantize_bundle(b.path, progress=False, max_drop=100.0, latency_runs=5)
    assert q["ops"]["non_int8"] == [] and q["test"]["agreement_int8_vs_fp32"] >= 0.75


def test_the_baseline_warning_names_the_model_that_lost(tmp_path, caplog):
    from quantize.train import TrainConfig, train

    root = make_images(tmp_path / "grey", classes=3, per_class=40, size=(20, 20), grey=True)
    b = train(TrainConfig(data=str(root), out=str(tmp_path / "b"), arch="cnn", epochs=1, learning_rate=0.0,
                          progress=False))
    base = b.manifest.reports["train"]["baseline"]
    cloud = b.manifest.reports["train"]["cloud"]["test"]["accuracy"]
    assert base["test_accuracy"] == 1.0 and cloud < 1.0  # a learning rate of 0: the CNN keeps its random weights
    assert base["warnings"] and base["warnings"][0].startswith("cloud model: the trained model")
    assert any("less accurate than the baseline" in r.getMessage() for r in caplog.records)
