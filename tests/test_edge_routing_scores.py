"""The SDK routes on the bundle's temperature, deferral model and out-of-distribution score: what it computes on
the device (with TensorFlow, Keras, scikit-learn and scipy unimportable) equals the scores computed here, and a
frame flagged out of distribution goes to the cloud or is answered "unknown", as the option says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import responses
from edge_helpers import DEVICE_ONLY_PRELUDE, LABELS, SIZE, tiny_images, tiny_keras

from edge_sdk.bundle import Manifest, ModelFile, Routing, load_bundle, write_bundle
from edge_sdk.hybrid import HybridClassifier
from edge_sdk.preprocess import InputSpec, PreprocessSpec
from edge_sdk.reasons import Reason
from edge_sdk.runtime import LocalModel
from edge_sdk.scores import DeferralModel, OODParams, edge_logits, softmax
from quantize.convert import convert_int8
from quantize.edge_outputs import with_routing_outputs
from quantize.routing_fit import fit_deferral
from quantize.tflite_eval import io_quant

REPO = Path(__file__).resolve().parent.parent
URL = "http://cloud.test/v2/models/tiny/infer"
TEMPERATURE = 2.0


def _routed_bundle(dest: Path, ood_threshold: float = 1e9) -> Path:
    """A tiny grey 8x8 bundle whose int8 model has its routing outputs, routed by a deferral model (fitted on
    random targets: what matters is that the device computes the same number), a temperature and an energy score."""
    model = tiny_keras(seed=4)
    rng = np.random.default_rng(4)
    blob = convert_int8(with_routing_outputs(model), rng.random((32, SIZE, SIZE, 1), dtype=np.float32))
    iq, oq = io_quant(blob)
    logits = rng.normal(0, 1, (200, len(LABELS)))
    deferral = fit_deferral(logits, rng.integers(0, 2, 200), temperature=TEMPERATURE)
    routing = Routing(metric="deferral", threshold=0.5, temperature=TEMPERATURE, deferral=deferral,
                      ood=OODParams(kind="energy", threshold=ood_threshold))
    manifest = Manifest(
        name="tiny", labels=LABELS, input=InputSpec(height=SIZE, width=SIZE, channels=1, color="GRAY"),
        preprocess=PreprocessSpec(), routing=routing,
        models={"edge": ModelFile(file="edge_int8.tflite", format="tflite-int8", input_quant=iq, output_quant=oq)},
    )
    write_bundle(dest, manifest, {"edge_int8.tflite": blob})
    return dest


@pytest.fixture(scope="module")
def routed(tmp_path_factory) -> Path:
    return _routed_bundle(tmp_path_factory.mktemp("routed") / "b")


def _expected(bundle: Path, img: np.ndarray) -> tuple[float, np.ndarray, float]:
    """The deferral score, the calibrated probabilities and the energy, computed here from the raw outputs."""
    b = load_bundle(bundle)
    model = LocalModel.from_bundle(b)
    from edge_sdk.preprocess import preprocess

    raw = model.predict_outputs(model.quantize_input(preprocess(img, b.manifest.input, b.manifest.preprocess)))
    z = edge_logits(raw, model.output_quant.scale / 2)
    r = b.manifest.routing
    score = float(DeferralModel(r.deferral)(z, TEMPERATURE)[0])
    return score, softmax(z, TEMPERATURE)[0], float(-np.log(np.exp(z).sum()))


def test_the_device_computes_the_bundles_scores_without_tensorflow(routed, tmp_path):
    img = tiny_images(1, seed=5)[0]
    np.save(tmp_path / "img.npy", img)
    code = (
        DEVICE_ONLY_PRELUDE +
        "import numpy as np\n"
        "from edge_sdk import HybridClassifier\n"
        f"clf = HybridClassifier.from_bundle({str(routed)!r}, mode='edge_only', probes=[])\n"
        f"p = clf.predict(np.load({str(tmp_path / 'img.npy')!r}))\n"
        "print(json.dumps({'score': p.edge_score, 'probs': p.probabilities.tolist(), 'ood': p.ood_score,\n"
        "                  'metric': clf.metric, 'backend': clf.model.backend}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    score, probs, ood = _expected(routed, img)
    assert got["metric"] == "deferral" and got["backend"] == "ai_edge_litert"
    assert got["score"] == pytest.approx(score, abs=1e-12)
    assert np.allclose(got["probs"], probs, atol=1e-12)  # the answer shows the temperature-scaled probabilities
    assert got["ood"] == pytest.approx(ood, abs=1e-9)


@responses.activate
@pytest.mark.parametrize("action", ["cloud", "unknown", "ignore"])
def test_an_out_of_distribution_frame_goes_where_the_option_says(tmp_path, action):
    bundle = _routed_bundle(tmp_path / "b", ood_threshold=-1e9)  # every frame is out of distribution
    responses.post(URL, json={"model_name": "tiny", "outputs": [
        {"name": "probabilities", "shape": [1, 4], "datatype": "FP32", "data": [0.04, 0.04, 0.88, 0.04]}]})
    clf = HybridClassifier.from_bundle(bundle, cloud_url="http://cloud.test", probes=[], threshold=1.0,
                                       out_of_distribution=action)  # threshold 1: the deferral score says "edge"
    p = clf.predict(tiny_images(1, seed=6)[0])
    assert p.out_of_distribution == (action != "ignore")
    if action == "cloud":
        assert (p.source, p.reason, p.label) == ("cloud", Reason.OUT_OF_DISTRIBUTION, "c2")
    elif action == "unknown":
        assert (p.source, p.reason, p.label, p.confidence) == ("edge", "out_of_distribution", "unknown", 0.0)
        assert _infer_calls() == 0 and clf.stats().by_reason == {"out_of_distribution": 1}
    else:
        assert (p.source, p.reason) == ("edge", "confident") and _infer_calls() == 0


def _infer_calls() -> int:
    """POSTs to the model (the client may also ask GET /v2 what the server speaks)."""
    return sum(c.request.method == "POST" for c in responses.calls)


def test_deferral_needs_a_deferral_model(tmp_path):
    from edge_helpers import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "plain")
    with pytest.raises(ValueError, match="deferral"):
        HybridClassifier.from_bundle(bundle, mode="edge_only", metric="deferral", threshold=0.5)
    with pytest.raises(ValueError, match="out_of_distribution"):
        HybridClassifier.from_bundle(bundle, mode="edge_only", out_of_distribution="maybe")


def test_an_old_bundle_reads_only_the_probabilities(tmp_path):
    from edge_helpers import make_tiny_bundle

    clf = HybridClassifier.from_bundle(make_tiny_bundle(tmp_path / "old"), mode="edge_only", probes=[])
    assert clf.bundle.manifest.routing.temperature == 1.0 and clf.bundle.manifest.routing.ood is None
    p = clf.predict(tiny_images(1)[0])
    assert p.ood_score is None and not p.out_of_distribution
    q = clf.model.output_quant
    steps = p.probabilities / q.scale + q.zero_point
    assert np.allclose(steps, np.round(steps), atol=1e-3)  # the int8 output itself: no temperature applied
    assert p.edge_score == pytest.approx(float(p.probabilities.max()))
