"""`hybrid-vision distill`: learn from collected samples, re-quantize, and refuse a model that is worse."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.bundle import load_bundle
from edge_sdk.preprocess import load_image, preprocess, resize
from edge_sdk.samples import SampleMeta, SampleStore, probs_list
from quantize.errors import DistillError, DistillRefusedError


def _digests(bundle: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}


def collect_from_cloud_model(bundle: Path, folder: Path, n: int = 240, shift: int = 0) -> int:
    """Store ``n`` validation images with the bundle's cloud model's probabilities, as the service answers them
    (``shift`` rolls them by that many classes: a cloud that answers wrongly)."""
    import keras

    from quantize.data import split_from_info

    b = load_bundle(bundle)
    man = b.manifest
    cloud = keras.saving.load_model(b.model_path("cloud"), compile=False, safe_mode=True)
    items = split_from_info(man.data).val[:n]
    images = [resize(load_image(p), man.input.height, man.input.width) for p, _ in items]
    probs = np.asarray(cloud(np.stack([preprocess(p, man.input, man.preprocess) for p, _ in items]), training=False))
    store = SampleStore(folder, labels=man.labels, name=man.name, fsync=False)
    for img, p in zip(images, np.roll(probs, shift, axis=1), strict=True):
        store.put(img, SampleMeta(kind="offload", time=0.0, label=man.labels[int(p.argmax())],
                                  probabilities=probs_list(p)))
    store.close()
    return len(images)


def test_a_worse_distilled_model_is_refused_and_nothing_is_written(quantized_bundle, tmp_path):
    from quantize.distill import DistillConfig, distill

    collect_from_cloud_model(quantized_bundle, tmp_path / "wrong", shift=3)  # every cloud answer 3 classes off
    before = _digests(quantized_bundle)
    out = tmp_path / "b2"
    cfg = DistillConfig(bundle=str(quantized_bundle), sources=[str(tmp_path / "wrong")], out=str(out), epochs=3,
                        lr=0.05, soft_weight=0.99, progress=False)
    with pytest.raises(DistillRefusedError, match="worse") as err:
        distill(cfg)
    cmp_ = err.value.report["compare"]
    assert cmp_["test"]["new"] < cmp_["test"]["old"]  # it learnt the wrong answers: worse against the truth
    assert err.value.report["accepted"] is False and err.value.report["refused_because"]
    assert _digests(quantized_bundle) == before  # B untouched
    assert not out.exists() and not list(tmp_path.glob(".b2*"))  # nothing written, no temp left


def _comparison(test_old: float, test_new: float) -> dict:
    return {"compare": {"holdout": {"n": 100, "reference": "the cloud's labels", "old": 0.60, "new": 0.65},
                        "test": {"n": 3000, "reference": "true labels", "old": test_old, "new": test_new}}}


def test_require_gain_refuses_a_tie_on_the_test_split_that_the_default_accepts():
    from quantize.distill import _decide

    tie = _comparison(1993 / 3000, 1993 / 3000)
    _decide(tie, tolerance=0.0, require_gain=False)  # a tie is not worse: accepted
    assert tie["accepted"] is True and tie["refused_because"] == []
    tie = _comparison(1993 / 3000, 1993 / 3000)
    with pytest.raises(DistillRefusedError, match="no better") as err:
        _decide(tie, tolerance=0.0, require_gain=True)
    assert tie["accepted"] is False and "test: 66.43% is no gain on 66.43%" in err.value.report["refused_because"][0]
    gain = _comparison(1993 / 3000, 1994 / 3000)
    _decide(gain, tolerance=0.0, require_gain=True)  # one more image right is a gain
    assert gain["accepted"] is True
    worse = _comparison(0.70, 0.69)
    with pytest.raises(DistillRefusedError, match="worse"):
        _decide(worse, tolerance=0.0, require_gain=True)
    _decide(_comparison(0.70, 0.69), tolerance=1.5, require_gain=False)  # within the tolerance


def test_a_distilled_model_is_requantized_recalibrated_and_written(quantized_bundle, tmp_path):
    from quantize.distill import DistillConfig, distill

    n = collect_from_cloud_model(quantized_bundle, tmp_path / "c")
    before = _digests(quantized_bundle)
    out = tmp_path / "b2"
    result = distill(DistillConfig(bundle=str(quantized_bundle), sources=[str(tmp_path / "c")], out=str(out),
                                   epochs=1, tolerance=5.0, progress=False))
    b2, old = load_bundle(out), load_bundle(quantized_bundle)
    assert _digests(quantized_bundle) == before
    assert b2.manifest.version == "2" and b2.has("edge_source")
    assert b2.manifest.models["cloud"].sha256 == old.manifest.models["cloud"].sha256  # the same cloud model
    assert b2.manifest.models["edge"].sha256 != old.manifest.models["edge"].sha256  # a new int8 edge model
    q, d = b2.manifest.reports["quantize"], b2.manifest.reports["distill"]
    assert q["passed"] and q["edge_role"] == "edge_source" and b2.manifest.routing.calibration is not None
    assert d["accepted"] and d["collected"]["train"] + d["collected"]["holdout"] == n == d["collected"]["total"]
    assert d["collected"]["holdout"] > 0 and d["fit"]["images"]["collected"] == d["collected"]["train"]
    assert set(d["compare"]) == {"holdout", "test"} and d["compare"]["test"]["n"] == q["test"]["n"]
    assert result.report == d


def test_distill_refuses_what_it_cannot_use(quantized_bundle, trained_bundle, tmp_path):
    from quantize.distill import DistillConfig, distill

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (str(trained_bundle), [str(empty)], "quantize"),  # no int8 edge model yet
        (str(quantized_bundle), [str(tmp_path / "missing")], "no such folder"),
        (str(quantized_bundle), [str(empty)], "no collected samples"),
    ]
    for bundle, sources, match in cases:
        with pytest.raises(DistillError, match=match):
            distill(DistillConfig(bundle=bundle, sources=sources, out=str(tmp_path / "o"), progress=False))
    SampleStore(tmp_path / "other", labels=["x", "y"]).close()
    with pytest.raises(DistillError, match="other labels"):
        distill(DistillConfig(bundle=str(quantized_bundle), sources=[str(tmp_path / "other")], out=str(tmp_path / "o"),
                              progress=False))
    with pytest.raises(DistillError, match="new bundle"):
        distill(DistillConfig(bundle=str(quantized_bundle), sources=[str(empty)], out=str(quantized_bundle),
                              progress=False))
