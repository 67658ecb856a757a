"""Temperature scaling, the calibration error, the deferral score and the out-of-distribution score, on small
synthetic data; the deferral score also on a "device" where TensorFlow, Keras, scikit-learn and scipy cannot load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import DEVICE_ONLY_PRELUDE

from edge_sdk.scores import (
    DeferralModel,
    DeferralParams,
    Mahalanobis,
    OODScorer,
    energy,
    logits_from_probs,
    softmax,
)
from quantize.routing_fit import (
    auroc,
    cloud_fixes,
    expected_calibration_error,
    fit_deferral,
    fit_ood,
    fit_temperature,
    negative_log_likelihood,
)

REPO = Path(__file__).resolve().parent.parent


def _overconfident(n: int = 4000, classes: int = 5, scale: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports scale * z (too sure of itself by a factor ``scale``)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = softmax(z)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return scale * z, y


def test_temperature_recovers_the_overconfidence_factor():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert negative_log_likelihood(logits, y, t) < negative_log_likelihood(logits, y, 1.0)


def test_temperature_fixes_the_calibration_error():
    logits, y = _overconfident()
    t = fit_temperature(logits[:2000], y[:2000])
    before = expected_calibration_error(softmax(logits[2000:]), y[2000:])
    after = expected_calibration_error(softmax(logits[2000:], t), y[2000:])
    assert before > 0.1 and after < 0.03


def test_temperature_keeps_the_answer_and_refuses_bad_input():
    logits, y = _overconfident(200)
    assert (softmax(logits, 2.5).argmax(1) == logits.argmax(1)).all()
    with pytest.raises(ValueError):
        fit_temperature(logits[:, 0], y)


def test_ece_by_hand():
    # 0.9 confident and right: |1 - 0.9| / 2; 0.6 confident and wrong: |0 - 0.6| / 2 -> 0.05 + 0.3
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.35)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == pytest.approx(0.0)


def test_energy_and_log_probs():
    z = np.array([[2.0, 0.0, -1.0]])
    assert energy(z)[0] == pytest.approx(-np.log(np.exp(2) + 1 + np.exp(-1)))
    lp = logits_from_probs(softmax(z))
    assert np.allclose(lp - lp.mean(), z - z.mean())  # log p is the logits up to a shift


def _deferral_data(n: int = 1500, classes: int = 4, seed: int = 1):
    """Edge logits where class 0 is often wrong and the cloud is right 90% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), y] += np.where(y == 0, 0.3, 2.5)
    edge_pred = logits.argmax(1)
    cloud_pred = np.where(rng.random(n) < 0.9, y, (y + 1) % classes)
    return logits, cloud_fixes(edge_pred, cloud_pred, y)


@pytest.mark.parametrize("hidden", [0, 8])
def test_deferral_model_learns_which_images_the_cloud_fixes(hidden):
    logits, target = _deferral_data()
    params = fit_deferral(logits[:1000], target[:1000], hidden=hidden)
    score = DeferralModel(params)(logits[1000:])
    assert score.shape == (500,) and ((score >= 0) & (score <= 1)).all()
    from sklearn.metrics import roc_auc_score

    max_prob_auc = roc_auc_score(target[1000:], -softmax(logits[1000:]).max(1))
    assert roc_auc_score(target[1000:], score) > max_prob_auc  # knows that class 0 is the weak one
    assert len(params.layers) == (1 if hidden == 0 else 2)
    DeferralParams.model_validate_json(params.model_dump_json())  # round-trips through the manifest


def test_deferral_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from edge_sdk.scores import summary_features

    logits, target = _deferral_data()
    params = fit_deferral(logits, target, inputs=("max_prob", "margin", "predicted"))
    parts = summary_features(logits, 1.0)
    x = np.concatenate([parts[k] for k in ("max_prob", "margin", "predicted")], axis=1)
    std = np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    ref = LogisticRegression(max_iter=2000).fit((x - x.mean(0)) / std, target)
    assert np.allclose(DeferralModel(params)(logits), ref.predict_proba((x - x.mean(0)) / std)[:, 1], atol=1e-6)


def test_bad_deferral_params_are_refused():
    with pytest.raises(ValueError):
        wide = {"weights": [[1.0, 2.0]], "bias": [0.0, 0.0]}
        DeferralParams(inputs=["max_prob"], mean=[0.0], std=[1.0], layers=[wide])
    with pytest.raises(ValueError):
        DeferralParams(inputs=["max_prob"], mean=[0.0], std=[0.0], layers=[{"weights": [[1.0]], "bias": [0.0]}])
    with pytest.raises(ValueError, match="one class"):
        fit_deferral(np.zeros((4, 3)), np.zeros(4))


def test_deferral_score_runs_on_a_device_without_tensorflow(tmp_path):
    """The score computed where tensorflow, keras, sklearn and scipy cannot be imported equals the one here."""
    logits, target = _deferral_data()
    params = fit_deferral(logits[:1000], target[:1000], hidden=8)
    expected = DeferralModel(params)(logits[1000:1010], 1.5)
    (tmp_path / "p.json").write_text(params.model_dump_json())
    np.save(tmp_path / "z.npy", logits[1000:1010])
    code = (
        DEVICE_ONLY_PRELUDE +
        "import numpy as np\n"
        "from edge_sdk.scores import DeferralModel, DeferralParams\n"
        f"p = DeferralParams.model_validate_json(open({str(tmp_path / 'p.json')!r}).read())\n"
        f"print(json.dumps(DeferralModel(p)(np.load({str(tmp_path / 'z.npy')!r}), 1.5).tolist()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert np.allclose(json.loads(out.stdout), expected, atol=1e-12)


def test_mahalanobis_separates_outliers_and_energy_scores_flat_logits_as_unusual():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 900)
    centres = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    feats = centres[y] + rng.normal(0, 1, (900, 4))
    train = {"features": feats[:600], "logits": feats[:600, :3]}
    val = {"features": feats[600:], "logits": feats[600:, :3]}
    fit = fit_ood("mahalanobis", val, train_outputs=train, train_y=y[:600])
    scorer = OODScorer(fit.params)
    outliers = rng.normal(0, 1, (300, 4)) + np.array([0, 0, 0, 6.0])
    out = {"features": outliers, "logits": outliers[:, :3]}
    assert auroc(scorer(val), scorer(out)) > 0.99
    assert fit.params.in_distribution_rate == pytest.approx(0.99, abs=0.01)
    assert scorer.is_out(scorer(out)).mean() > 0.95
    flat = {"logits": np.zeros((1, 3))}
    assert OODScorer(fit_ood("energy", val).params)(flat)[0] > np.median(energy(val["logits"]))
    both = fit_ood("mahalanobis", val, train_outputs=train, train_y=y[:600], outputs=("features", "logits"),
                   class_conditional=False)
    assert len(both.params.components) == 2 and auroc(OODScorer(both.params)(val), OODScorer(both.params)(out)) > 0.99


def test_the_precomputed_mahalanobis_equals_the_textbook_form_for_batches_and_single_frames():
    rng = np.random.default_rng(4)
    d, k = 24, 7
    a = rng.normal(size=(3 * d, d))
    precision = np.linalg.inv(a.T @ a / len(a))
    precision = (precision + precision.T) / 2
    means, f = rng.normal(size=(k, d)), 2 * rng.normal(size=(40, d))
    diff = f[:, None, :] - means[None]
    textbook = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)  # (f - mu)^T P (f - mu), nearest mu
    m = Mahalanobis(means, precision, center=5.0, scale=3.0)
    assert np.allclose(m(f), (textbook - 5.0) / 3.0, rtol=1e-10, atol=1e-10)
    one = [m.one(row.astype(np.float32)) for row in f]  # the per-call path, from the model's float32 outputs
    f32 = f.astype(np.float32).astype(np.float64)
    diff32 = f32[:, None, :] - means[None]
    expected = (np.einsum("nkd,de,nke->nk", diff32, precision, diff32).min(axis=1) - 5.0) / 3.0
    assert np.allclose(one, expected, rtol=1e-10, atol=1e-10)
    lopsided = precision + np.triu(rng.normal(size=(d, d)), 1)  # a precision stored a little off symmetric
    textbook = np.einsum("nkd,de,nke->nk", diff, lopsided, diff).min(axis=1)
    assert np.allclose(Mahalanobis(means, lopsided)(f), textbook, rtol=1e-10, atol=1e-10)


def test_the_ood_score_of_one_frame_is_the_batch_score_of_that_frame():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 600)
    feats = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])[y] + rng.normal(0, 1, (600, 3))
    outs = {"features": feats, "logits": feats}
    for kind in ("mahalanobis", "energy", "max_logit"):
        scorer = OODScorer(fit_ood(kind, outs, train_outputs=outs, train_y=y).params)
        batch = scorer(outs)
        for i in (0, 17, 599):
            frame = {name: v[i].astype(np.float32) for name, v in outs.items()}
            assert scorer.score_one(frame) == pytest.approx(float(scorer({n: v[None] for n, v in frame.items()})[0]),
                                                            rel=1e-9, abs=1e-9)
            assert scorer.score_one(frame) == pytest.approx(batch[i], rel=1e-5, abs=1e-5)  # float32 frame


def test_auroc_by_hand():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([0.0, 2.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts half


def _labelled(n: int, seed: int, signal: bool):
    """Edge outputs (logits, probabilities, two stages of features), cloud answers and labels. With ``signal`` the
    edge is right where its logits are sure; without, who is right has nothing to do with the outputs."""
    from quantize.routing_calibration import Labelled

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1, (n, 4))
    z[np.arange(n), y] += 2.0 if signal else 0.0
    p = softmax(z)
    edge = np.where(rng.random(n) < 0.7, y, (y + 1) % 4) if not signal else p.argmax(1)
    cloud_ok = rng.random(n) < 0.85
    cloud = np.eye(4)[np.where(cloud_ok, y, (y + 2) % 4)]
    probs = np.eye(4)[edge] * 0.6 + 0.1 if not signal else p
    outs = {"probabilities": probs, "logits": z, "features": rng.normal(0, 1, (n, 6)) + y[:, None],
            "stage_1": rng.normal(0, 1, (n, 3)), "stage_2": rng.normal(0, 1, (n, 5)) + y[:, None]}
    return Labelled(outs, cloud, y)


def test_the_deferral_model_is_judged_out_of_fold_on_the_data_it_was_fitted_on():
    """Where nothing predicts which images the cloud fixes, the in-sample scores still look useful; the
    out-of-fold ones, which choose the metric, do not."""
    from edge_sdk.scores import edge_logits
    from quantize.routing_calibration import RoutingConfig, out_of_fold_deferral

    data = _labelled(600, 0, signal=False)
    target = cloud_fixes(data.outputs["probabilities"].argmax(1), data.cloud.argmax(1), data.y)
    logits = edge_logits(data.outputs)
    in_sample = DeferralModel(fit_deferral(logits, target, l2=0.01))(logits)
    oof = out_of_fold_deferral(data, 1.0, 1e-4, RoutingConfig())
    auc = lambda s: auroc(s[target == 0], s[target == 1])  # noqa: E731
    assert oof.shape == (600,) and auc(in_sample) > auc(oof) and abs(auc(oof) - 0.5) < 0.1


def test_the_routing_fit_reads_every_stage_for_the_out_of_distribution_score():
    from quantize.routing_calibration import RoutingConfig, fit_routing

    val, train = _labelled(800, 1, signal=True), _labelled(800, 2, signal=True)
    fit = fit_routing(val, train, RoutingConfig())
    assert fit.ood is not None and [c.output for c in fit.ood.components] == ["stage_1", "stage_2"]
    only = fit_routing(val, train, RoutingConfig(ood_outputs=("features",)))
    assert only.ood is not None and [c.output for c in only.ood.components] == ["features"]
    c = fit.calibration
    assert c["bound_points"] >= c["estimate_points"] and c["offload"] >= c["point_estimate"]["offload"]
