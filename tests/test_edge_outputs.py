"""The int8 edge model with named routing outputs (logits, features) beside its probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from edge_helpers import SIZE, tiny_keras

from edge_sdk.errors import ModelLoadError
from edge_sdk.runtime import LocalModel
from edge_sdk.scores import softmax
from quantize.convert import convert_int8
from quantize.edge_outputs import with_routing_outputs
from quantize.tflite_eval import io_quant, run_tflite, run_tflite_named


@pytest.fixture(scope="module")
def models():
    keras_model = tiny_keras(seed=3)
    rep = np.random.default_rng(0).random((32, SIZE, SIZE, 1), dtype=np.float32)
    plain = convert_int8(keras_model, rep)
    routed = convert_int8(with_routing_outputs(keras_model), rep)
    return keras_model, plain, routed, rep


def test_the_routing_model_gives_the_same_probabilities(models):
    keras_model, plain, routed, rep = models
    a, b = run_tflite(plain, rep), run_tflite(routed, rep)
    assert np.array_equal(a, b)  # same ops, same calibration: the very same int8 answers
    assert io_quant(plain) == io_quant(routed)


def test_local_model_reads_named_outputs(models):
    keras_model, _, routed, rep = models
    m = LocalModel(routed)
    assert m.extra_outputs == ("features", "logits", "stage_1") and m.num_classes == 4
    xq = m.quantize_input(rep[0])
    out = m.predict_outputs(xq)
    assert np.array_equal(out["probabilities"], m.predict_quantized(xq))
    assert out["logits"].shape == (4,) and out["features"].shape == (4,)
    assert np.abs(softmax(out["logits"]) - out["probabilities"]).max() < 0.02  # int8 steps apart
    ref = keras_model(rep[:1]).numpy()[0]
    assert np.abs(softmax(out["logits"]) - ref).max() < 0.05
    named = run_tflite_named(routed, rep[:3])
    assert np.allclose(named["logits"][0], out["logits"]) and named["features"].shape == (3, 4)
    some = m.predict_outputs(xq, {"logits", "absent"})  # only what a score reads; a name the model lacks is skipped
    assert set(some) == {"probabilities", "logits"} and np.array_equal(some["logits"], out["logits"])


def test_single_output_models_have_no_extras(models):
    _, plain, _, rep = models
    m = LocalModel(plain)
    out = m.predict_outputs(m.quantize_input(rep[0]))
    assert m.extra_outputs == () and set(out) == {"probabilities"}


def test_a_multi_output_model_without_probabilities_is_refused(tmp_path):
    import keras

    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inp))
    model = keras.Model(inp, {"boxes": keras.layers.Dense(4)(x), "scores": keras.layers.Dense(2)(x)})
    blob = convert_int8(model, np.random.default_rng(0).random((8, SIZE, SIZE, 1), dtype=np.float32))
    with pytest.raises(ModelLoadError, match="probabilities"):
        LocalModel(blob)


def test_models_without_a_softmax_head_get_no_routing_outputs():
    import keras

    inp = keras.Input((SIZE, SIZE, 1))
    out = keras.layers.Dense(3, activation="sigmoid")(keras.layers.Flatten()(inp))
    assert with_routing_outputs(keras.Model(inp, out)) is None
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(inp))
    probs = keras.layers.Softmax()(logits)
    routed = with_routing_outputs(keras.Model(inp, probs))
    assert set(routed.output) == {"probabilities", "logits", "features"}
