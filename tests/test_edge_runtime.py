"""LocalModel on real int8 TFLite models: backends, quantization, thread safety, atomic swap."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from edge_helpers import SIZE, cached_tiny_bundle, tiny_images

from edge_sdk.bundle import load_bundle
from edge_sdk.errors import ModelLoadError
from edge_sdk.hybrid import HybridClassifier
from edge_sdk.preprocess import QuantParams, preprocess
from edge_sdk.runtime import LocalModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_bundle(tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory):
    return cached_tiny_bundle(tmp_path_factory, seed=1)


def _inputs(bundle, n=12):
    m = bundle.manifest
    return np.stack([preprocess(im, m.input, m.preprocess) for im in tiny_images(n)])


def test_loads_with_litert_and_reads_quantization_from_the_model(tiny):
    b = load_bundle(tiny)
    m = LocalModel.from_bundle(b, num_threads=1)
    assert m.backend == "ai_edge_litert"
    assert m.input_shape == (SIZE, SIZE, 1) and m.num_classes == 4
    assert m.input_quant == b.manifest.models["edge"].input_quant
    assert m.output_quant == b.manifest.models["edge"].output_quant
    assert m.sha256 == b.manifest.models["edge"].sha256


def test_matches_tensorflow_lite_and_the_float_model(tiny):
    import keras

    b = load_bundle(tiny)
    x = _inputs(b)
    litert = LocalModel.from_bundle(b).predict_batch(x)
    tfl = LocalModel.from_bundle(b, backend="tensorflow")
    assert tfl.backend == "tensorflow"
    assert np.array_equal(litert, tfl.predict_batch(x))  # same int8 kernels, same answer
    ref = keras.saving.load_model(tiny / "cloud.keras", safe_mode=True).predict(x, verbose=0)
    # int8: within a few output quantization steps of the float model
    assert np.abs(litert - ref).max() <= 6 * b.manifest.models["edge"].output_quant.scale
    assert np.allclose(litert.sum(1), 1, atol=0.05)


def test_float_and_prequantized_inputs_agree(tiny):
    m = LocalModel.from_bundle(load_bundle(tiny))
    x = _inputs(load_bundle(tiny), 1)[0]
    assert np.array_equal(m.predict(x), m.predict_quantized(m.quantize_input(x)))
    assert m.predict_quantized(m.quantize_input(x)).dtype == np.float32


def test_backend_fallback_order_and_missing_backends(tiny):
    b = load_bundle(tiny)
    assert LocalModel.from_bundle(b, backend=["tflite_runtime", "ai_edge_litert"]).backend == "ai_edge_litert"
    with pytest.raises(ModelLoadError, match="tflite_runtime"):
        LocalModel.from_bundle(b, backend=["tflite_runtime"])


def test_manifest_quantization_mismatch_is_refused(tiny):
    path = tiny / "edge_int8.tflite"
    real = LocalModel(path)
    wrong = QuantParams(scale=real.input_quant.scale * 2, zero_point=real.input_quant.zero_point, dtype="int8")
    with pytest.raises(ModelLoadError, match="input_quant"):
        LocalModel(path, input_quant=wrong)


def test_corrupt_or_wrong_models_are_typed_errors(tiny, tmp_path):
    with pytest.raises(ModelLoadError, match="sha256"):
        LocalModel(tiny / "edge_int8.tflite", expected_sha256="0" * 64)
    with pytest.raises(ModelLoadError):
        LocalModel(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelLoadError, match="cannot read"):
        LocalModel(tmp_path / "missing.tflite")
    blob = (tiny / "edge_int8.tflite").read_bytes()
    with pytest.raises(ModelLoadError):
        LocalModel(blob[: len(blob) // 2])


def test_eight_threads_get_the_sequential_answers(tiny):
    b = load_bundle(tiny)
    m = LocalModel.from_bundle(b, num_threads=1)
    x = _inputs(b, 16)
    want = m.predict_batch(x)
    errors, seen = [], []

    def worker(k):
        try:
            for rep in range(30):
                i = (k + rep) % len(x)
                if not np.array_equal(m.predict(x[i]), want[i]):
                    errors.append((k, i))
            seen.append(m._slot()[0])  # held, so no two can share an id
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errors == []
    assert len({id(i) for i in seen}) == 8  # one interpreter per thread


def test_swap_while_predicting_never_mixes_models(tiny, tiny_b):
    """Threads keep predicting while the model is swapped; every answer is wholly A's or wholly B's."""
    a = load_bundle(tiny)
    clf = HybridClassifier.from_bundle(a, mode="edge_only", probes=[])
    model_b = LocalModel.from_bundle(load_bundle(tiny_b))
    imgs = tiny_images(8, seed=3)
    want_a = [clf.predict(im).probabilities for im in imgs]
    clf_b = HybridClassifier.from_bundle(tiny_b, mode="edge_only", probes=[])
    want_b = [clf_b.predict(im).probabilities for im in imgs]
    assert any(not np.array_equal(p, q) for p, q in zip(want_a, want_b, strict=False))
    stop, swapped = threading.Event(), threading.Event()
    bad, after = [], []

    def worker(k):
        i = 0
        while not stop.is_set():
            j = (k + i) % len(imgs)
            was_swapped = swapped.is_set()
            p = clf.predict(imgs[j]).probabilities
            if not (np.array_equal(p, want_a[j]) or np.array_equal(p, want_b[j])):
                bad.append(j)
            if was_swapped:
                after.append(np.array_equal(p, want_b[j]))
            i += 1

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    threading.Event().wait(0.2)
    old = clf.swap_model(model_b)
    swapped.set()
    threading.Event().wait(0.2)
    stop.set()
    [t.join() for t in ts]
    assert old is not None and clf.model is model_b
    assert bad == []
    assert after and all(after)  # a call that started after the swap used the new model


def test_swap_refuses_a_model_for_another_input(tiny, tmp_path):
    import keras
    from edge_helpers import to_int8

    inp = keras.Input((SIZE * 2, SIZE * 2, 1))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    rep = np.random.default_rng(0).random((8, SIZE * 2, SIZE * 2, 1), dtype=np.float32)
    blob, _, _ = to_int8(keras.Model(inp, out), rep)
    clf = HybridClassifier.from_bundle(tiny, mode="edge_only", probes=[])
    before = clf.model
    with pytest.raises(ModelLoadError, match="input"):
        clf.swap_model(LocalModel(blob))
    assert clf.model is before


@pytest.mark.parametrize("channels,mean,std,dtype", [
    (1, [0.0], [1.0], "int8"),
    (3, [0.0], [1.0], "int8"),
    (3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "int8"),  # per channel: ImageNet
    (3, [0.5], [0.5], "uint8"),
])
def test_pixel_table_equals_the_one_preprocessing_path(channels, mean, std, dtype):
    """The hot path's table look-up gives exactly what normalize + quantize give."""
    from edge_sdk.preprocess import InputSpec, PreprocessSpec, normalize, quantize
    from edge_sdk.runtime import PixelQuantizer

    inp = InputSpec(height=24, width=20, channels=channels, color="GRAY" if channels == 1 else "RGB")
    pp = PreprocessSpec(mean=mean, std=std)
    lo = (0 - max(mean)) / min(std)
    q = QuantParams(scale=(1 / min(std) + abs(lo)) / 255, zero_point=-128 if dtype == "int8" else 0, dtype=dtype)
    pq = PixelQuantizer(inp, pp, q)
    assert pq.exact
    rng = np.random.default_rng(1)
    for _ in range(20):
        rgb = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        got = pq(rgb)
        want = quantize(normalize(rgb, inp, pp), q)
        assert got.dtype == want.dtype and got.shape == want.shape == (24, 20, channels)
        assert np.array_equal(got, want)


def test_output_table_equals_dequantize(tiny):
    from edge_sdk.preprocess import dequantize

    m = LocalModel.from_bundle(load_bundle(tiny))
    vals = np.arange(-128, 128, dtype=np.int8)
    assert np.array_equal(m._deq[vals.view(np.uint8)], dequantize(vals, m.output_quant))
