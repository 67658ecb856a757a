"""int8 quantization: conversion, the parity proof, the refusals, and the calibrated routing threshold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.bundle import DataInfo, Manifest, ModelFile, load_bundle, write_bundle
from edge_sdk.preprocess import InputSpec, PreprocessSpec, dequantize, quantize
from quantize.calibrate import calibrate, confidence_scores, is_confident, pick_point, sweep
from quantize.pipeline import (
    AccuracyDropError,
    CalibrationDataError,
    FloatOpsError,
    QuantizeError,
    quantize_bundle,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file in a bundle directory, manifest included."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def tiny_bundle(dest: Path, activation: str = "relu", seed: int = 0) -> Path:
    """An untrained 32x32 grey digits classifier with one conv: seconds to convert, for the edge cases."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((32, 32, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = layers.Activation(activation)(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inp, out)
    src = dest.parent / f"{dest.name}-src.keras"
    model.save(src)
    man = Manifest(
        name="tiny", labels=[str(i) for i in range(10)], input=InputSpec(height=32, width=32, channels=1, color="GRAY"),
        preprocess=PreprocessSpec(), models={"cloud": ModelFile(file="cloud.keras", format="keras")},
        data=DataInfo(source="digits"),
    )
    write_bundle(dest, man, {"cloud.keras": src})
    return dest


def write_pngs(folder: Path, n: int, seed: int = 0) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))


# --- routing metrics and threshold choice (pure numpy) ------------------------------------------


def test_confidence_scores_match_their_definitions():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(confidence_scores(p, "max_prob"), [0.7, 0.4, 1.0])
    np.testing.assert_allclose(confidence_scores(p, "margin"), [0.5, 0.0, 1.0])
    ent = [-(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)),
           -(2 * 0.4 * np.log(0.4) + 0.2 * np.log(0.2)), 0.0]
    np.testing.assert_allclose(confidence_scores(p, "entropy"), ent, atol=1e-9)
    assert list(is_confident(np.array([0.1, 0.5, 0.9]), 0.5, "max_prob")) == [False, True, True]
    assert list(is_confident(np.array([0.1, 0.5, 0.9]), 0.5, "entropy")) == [True, True, False]
    with pytest.raises(ValueError, match="unknown (routing|confidence) metric"):
        confidence_scores(p, "vibes")


def test_calibration_picks_lowest_offload_that_meets_the_target():
    rng = np.random.default_rng(1)
    n, c = 400, 5
    y = rng.integers(0, c, n)
    conf = rng.uniform(0.2, 1.0, n)
    edge_pred = np.where(rng.random(n) < conf, y, (y + 1) % c)  # the less confident, the more often wrong
    edge = np.full((n, c), 0.0)
    edge[np.arange(n), edge_pred] = conf
    edge[np.arange(n), (edge_pred + 2) % c] = 1 - conf
    cloud = np.eye(c)[np.where(rng.random(n) < 0.97, y, (y + 3) % c)]
    cal = calibrate(edge, cloud, y, target_gap=1.0)
    floor = cal.cloud_accuracy - 0.01
    ch = cal.chosen
    curve = cal.curves[ch.metric]
    assert ch.threshold == curve.thresholds[ch.index] and ch.accuracy >= floor
    # recompute the chosen point from scratch: the curve is real, not a constant
    ok = is_confident(confidence_scores(edge, ch.metric), ch.threshold, ch.metric)
    assert np.isclose(1 - ok.mean(), ch.offload)
    assert np.isclose(np.where(ok, edge.argmax(1) == y, cloud.argmax(1) == y).mean(), ch.accuracy)
    for _m, cv in cal.curves.items():  # no feasible point of any metric offloads less
        feasible = cv.accuracy >= floor - 1e-12
        assert cv.offload[feasible].min() >= ch.offload - 1e-12
    assert 0 < ch.offload < 1  # an edge at ~60% needs some help, but not for everything

    capped = calibrate(edge, cloud, y, max_offload=0.1)
    assert capped.chosen.offload <= 0.1
    for cv in capped.curves.values():
        assert cv.accuracy[cv.offload <= 0.1 + 1e-12].max() <= capped.chosen.accuracy + 1e-12


def test_sweep_ends_cover_all_edge_and_all_cloud():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    cv = sweep(p, p, np.array([0, 1, 1]), "margin")
    assert cv.offload.min() == 0.0 and cv.offload.max() == 1.0
    with pytest.raises(ValueError):
        pick_point(cv)


# --- refusals: nothing is written ------------------------------------------------------------------


def test_bad_calibration_folders_give_clear_errors(tmp_path):
    bundle = tiny_bundle(tmp_path / "b")
    before = snapshot(bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match="need at least 2"):
        quantize_bundle(bundle, calib_dir=empty, progress=False)
    one = tmp_path / "one"
    write_pngs(one / "cats", 4)
    with pytest.raises(CalibrationDataError, match=r"found 1 class folder"):
        quantize_bundle(bundle, calib_dir=one, progress=False)
    broken = tmp_path / "broken"
    for c in ("a", "b"):
        (broken / c).mkdir(parents=True)
        (broken / c / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(CalibrationDataError, match="could be read"):
        quantize_bundle(bundle, calib_dir=broken, progress=False)
    with pytest.raises(CalibrationDataError, match="no such folder"):
        quantize_bundle(bundle, calib_dir=tmp_path / "missing", progress=False)
    assert snapshot(bundle) == before


def test_cli_reports_bad_calibration_folder(tmp_path, capsys):
    from edge_sdk.cli import main

    bundle = tiny_bundle(tmp_path / "b")
    (tmp_path / "empty").mkdir()
    rc = main(["quantize", str(bundle), "--calib", str(tmp_path / "empty"), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "CalibrationDataError" in err and "need at least 2" in err


@pytest.mark.slow
def test_float_op_is_named_and_refused_unless_allowed(tmp_path):
    bundle = tiny_bundle(tmp_path / "b", activation="elu")  # TFLite has no int8 ELU kernel
    before = snapshot(bundle)
    with pytest.raises(FloatOpsError, match="ELU") as ei:
        quantize_bundle(bundle, progress=False, max_drop=100)
    assert any(o["op"] == "ELU" and "float32" in o["inputs"] for o in ei.value.ops)
    assert snapshot(bundle) == before

    rep = quantize_bundle(bundle, progress=False, max_drop=100, allow_float_ops=True)
    named = {o["op"] for o in rep["ops"]["non_int8"]}
    assert "ELU" in named and "CONV_2D" not in named
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["reports"]["quantize"]["ops"]["allowed_float_ops"] is True


@pytest.mark.slow
def test_max_drop_failure_leaves_bundle_byte_identical(trained_bundle, tmp_path, capsys):
    """Calibrating on near-black noise squeezes the ranges: real digits saturate and accuracy collapses."""
    import cv2

    from edge_sdk.cli import main

    dark = tmp_path / "dark"
    for c in ("a", "b"):
        (dark / c).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(dark / c / f"{i}.png"), np.random.default_rng(i).integers(0, 12, (32, 32), dtype=np.uint8))
    before = snapshot(trained_bundle)
    with pytest.raises(AccuracyDropError) as ei:
        quantize_bundle(trained_bundle, calib_dir=dark, progress=False)
    rep = ei.value.report
    assert rep["test"]["accuracy_drop_points"] > 1.0 and rep["passed"] is False
    assert snapshot(trained_bundle) == before
    assert sorted(p.name for p in trained_bundle.parent.iterdir()) == ["bundle", "dark"]  # no temp dir left over

    rc = main(["quantize", str(trained_bundle), "--calib", str(dark), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "AccuracyDropError" in err and "edge TFLite int8" in err
    assert snapshot(trained_bundle) == before


@pytest.mark.slow
def test_uint8_io(tmp_path):
    from quantize.tflite_eval import io_quant, make_interpreter, output_detail, run_tflite

    bundle = tiny_bundle(tmp_path / "b")
    rep = quantize_bundle(bundle, io_dtype="uint8", progress=False, max_drop=100)
    assert rep["io_dtype"] == "uint8" and rep["ops"]["non_int8"] == []
    b = load_bundle(bundle)
    edge = b.manifest.models["edge"]
    assert edge.format == "tflite-int8"
    assert edge.input_quant.dtype == "uint8" and edge.output_quant.dtype == "uint8"
    model = b.model_path("edge")
    assert (edge.input_quant, edge.output_quant) == io_quant(model)
    it = make_interpreter(model)
    probs_out = output_detail(it)  # the model also has the routing outputs (logits, features), all uint8
    assert it.get_input_details()[0]["dtype"] == np.uint8
    assert {d["dtype"] for d in it.get_output_details()} == {np.uint8}

    # the edge SDK's path: quantize with the manifest's params, invoke, dequantize
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    by_hand = []
    for xi in x:
        it.set_tensor(it.get_input_details()[0]["index"], quantize(xi[None], edge.input_quant))
        it.invoke()
        by_hand.append(dequantize(it.get_tensor(probs_out["index"]), edge.output_quant)[0])
    probs = run_tflite(model, x)
    np.testing.assert_array_equal(probs, np.stack(by_hand))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.03)


# --- the real digits bundle -------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_int8_meets_parity_targets(quantized_bundle_session):
    import keras

    from quantize.data import load_arrays, split_from_info
    from quantize.tflite_eval import io_quant, run_tflite

    b = load_bundle(quantized_bundle_session)  # verifies every sha256
    m = b.manifest
    rep = m.reports["quantize"]
    assert rep["passed"] and rep["ops"]["non_int8"] == [] and rep["ops"]["total"] > 0
    assert rep["test"]["accuracy_drop_points"] <= 0.5, rep["test"]["accuracy"]
    assert rep["test"]["agreement_int8_vs_fp32"] >= 0.99
    assert rep["size_bytes"]["ratio_fp32_over_int8"] > 3.0
    lat = rep["latency"]
    assert lat["tflite_int8"]["num_threads"] == 1 and lat["tflite_int8"]["runs"] >= 5
    assert lat["tflite_fp32"]["median_ms"] > 0 and lat["tflite_int8"]["median_ms"] > 0
    edge = m.models["edge"]
    assert edge.file == "edge_int8.tflite" and edge.format == "tflite-int8" and edge.input_quant.dtype == "int8"
    assert (edge.input_quant, edge.output_quant) == io_quant(b.model_path("edge"))

    # re-measure agreement independently of the pipeline
    test = load_arrays(split_from_info(m.data).test, m.input, m.preprocess, progress=False)
    p8 = run_tflite(b.model_path("edge"), test.x)
    pk = np.asarray(keras.saving.load_model(b.model_path("cloud"), compile=False)(test.x, training=False))
    assert np.isclose((p8.argmax(1) == pk.argmax(1)).mean(), rep["test"]["agreement_int8_vs_fp32"])
    assert np.isclose((p8.argmax(1) == test.y).mean(), rep["test"]["accuracy"]["edge_int8"])
    for name in ("quantize_calibration.png", "quantize_confusion_int8.png"):
        assert (b.path / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_routing_record_is_measured_on_the_calibration_part(quantized_bundle_session):
    """The manifest's estimate and bound are what the SDK's own scores give on the validation calibration part."""
    import keras

    from edge_sdk.runtime import LocalModel
    from edge_sdk.scores import LOWER_IS_CONFIDENT, DeferralModel, metric_scores
    from quantize.data import load_arrays, split_from_info
    from quantize.routing_calibration import split_fit_calibrate
    from quantize.threshold_bound import gap_upper_bound

    b = load_bundle(quantized_bundle_session)
    r = b.manifest.routing
    cal = r.calibration
    assert cal["mode"] == "target_gap" and cal["delta"] == 0.1 and r.metric == cal["metric"]
    assert cal["n"] + cal["n_fit"] == cal["n_val"] and r.threshold == cal["threshold"]
    assert cal["bound_points"] >= cal["estimate_points"] or cal["too_small"]
    assert cal["offload"] >= cal["point_estimate"]["offload"]  # the bound never offloads less
    assert set(cal["curves"]) >= {"max_prob", "margin", "entropy", "oracle"}

    m = b.manifest
    val = load_arrays(split_from_info(m.data).val, m.input, m.preprocess, progress=False)
    _, idx = split_fit_calibrate(val.y, 0.5)
    model = LocalModel.from_bundle(b)
    outs = [model.predict_outputs(model.quantize_input(x)) for x in val.x[idx]]
    batch = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
    deferral = DeferralModel(r.deferral) if r.deferral else None
    s = metric_scores(batch, r.metric, temperature=r.temperature, deferral=deferral,
                      prob_floor=model.output_quant.scale / 2)
    kept = s <= r.threshold if r.metric in LOWER_IS_CONFIDENT else s >= r.threshold
    pc = np.asarray(keras.saving.load_model(b.model_path("cloud"), compile=False)(val.x[idx], training=False))
    e_ok, c_ok = batch["probabilities"].argmax(1) == val.y[idx], pc.argmax(1) == val.y[idx]
    harm, help_ = int((kept & c_ok & ~e_ok).sum()), int((kept & e_ok & ~c_ok).sum())
    assert np.isclose(1 - kept.mean(), cal["offload"])
    assert np.isclose(100 * (harm - help_) / len(idx), cal["estimate_points"])
    if not cal["too_small"]:
        assert np.isclose(100 * gap_upper_bound(harm, help_, len(idx), 0.1), cal["bound_points"])
        assert cal["bound_points"] <= cal["target_gap_points"]
    else:
        assert kept.sum() == 0 and cal["note"]


def test_bundle_without_data_needs_calib(tmp_path):
    bundle = tiny_bundle(tmp_path / "b")
    man = json.loads((bundle / "manifest.json").read_text())
    man["data"] = None
    (bundle / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QuantizeError, match="--calib"):
        quantize_bundle(bundle, progress=False)
