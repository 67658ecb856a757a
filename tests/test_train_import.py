"""`train` and `import` produce loadable bundles; `--help` needs no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_sdk.bundle import load_bundle

pytestmark = pytest.mark.slow


def test_trained_bundle_is_complete_and_scored(trained_bundle_session):
    b = load_bundle(trained_bundle_session)
    m = b.manifest
    assert m.labels == [str(i) for i in range(10)]
    assert (m.input.height, m.input.width, m.input.channels, m.input.color) == (32, 32, 1, "GRAY")
    assert set(m.models) == {"cloud"} and m.models["cloud"].format == "keras"
    assert m.data.source == "digits" and m.data.counts == {"train": 1259, "val": 269, "test": 269}
    rep = m.reports["train"]["cloud"]
    assert rep["test"]["n"] == 269
    assert rep["test"]["accuracy"] >= 0.90, "quick training should still learn digits"
    assert 0 < rep["test"]["macro_f1"] <= 1
    cm = np.array(rep["test"]["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 269
    png = (b.path / "train_confusion_cloud.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_model_loads_safely_and_predicts_probabilities(trained_bundle_session):
    import keras

    from edge_sdk.preprocess import preprocess

    b = load_bundle(trained_bundle_session)
    model = keras.saving.load_model(b.model_path("cloud"), safe_mode=True)
    from quantize.data import split_from_info

    sp = split_from_info(b.manifest.data)
    x = np.stack([preprocess(p, b.manifest.input, b.manifest.preprocess) for p, _ in sp.test[:20]])
    probs = np.asarray(model(x))
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == np.array([y for _, y in sp.test[:20]])).mean() >= 0.8


def test_big_little_trains_a_separate_edge_network(tmp_path):
    from quantize.train import TrainConfig, train

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(12):
            img = np.clip(rng.normal(0, 30, (40, 40, 3)) + colour, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"c{c}" / f"{i}.png"), img)
    b = train(TrainConfig(data=str(root), out=str(tmp_path / "bl"), input_size=32, arch="cnn", edge_arch="mobilenetv2",
                          edge_width=0.35, epochs=2, patience=2, progress=False))
    loaded = load_bundle(b.path)
    assert set(loaded.manifest.models) == {"cloud", "edge_source"}
    rep = loaded.manifest.reports["train"]
    assert rep["edge_source"]["arch"] == "mobilenetv2"
    assert rep["edge_source"]["params"] < rep["cloud"]["params"]
    assert loaded.manifest.input.channels == 3 and rep["recipe"]["augment"]["flip"] is True
    assert rep["edge_source"]["distilled"] is True


def _tiny_model(tmp_path, softmax: bool):
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax" if softmax else None,
                             kernel_initializer=keras.initializers.RandomNormal(stddev=5.0))(x)
    path = tmp_path / ("soft.keras" if softmax else "logits.keras")
    keras.Model(inp, out).save(path)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    return path


@pytest.mark.parametrize("softmax", [False, True])
def test_import_detects_logits_and_adds_softmax(tmp_path, softmax):
    import keras

    from quantize.importer import ImportConfig, import_model

    path = _tiny_model(tmp_path, softmax)
    b, rep = import_model(ImportConfig(model=str(path), labels=str(tmp_path / "labels.txt"), out=str(tmp_path / "out"),
                                       preprocess="tf"))
    assert rep["added_softmax"] is (not softmax)
    m = keras.saving.load_model(load_bundle(b.path).model_path("cloud"), safe_mode=True)
    probs = np.asarray(m(np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype("float32")))
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert b.manifest.preprocess.mean == [1.0]


def test_import_refuses_label_count_mismatch(tmp_path):
    from quantize.importer import ImportConfig, ModelImportError, import_model

    path = _tiny_model(tmp_path, True)
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ModelImportError, match="3 outputs but .* has 2 labels"):
        import_model(ImportConfig(model=str(path), labels=str(tmp_path / "two.txt"), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_import_refuses_a_non_model_file(tmp_path):
    from quantize.importer import ImportConfig, ModelImportError, import_model

    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    (tmp_path / "l.txt").write_text("a\nb\n")
    with pytest.raises(ModelImportError, match="cannot load as a Keras model"):
        import_model(ImportConfig(model=str(bad), labels=str(tmp_path / "l.txt"), out=str(tmp_path / "o")))


BLOCK_HEAVY = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'sklearn', 'matplotlib'):
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
from edge_sdk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_help_and_train_help_need_no_tensorflow():
    for argv in (["--help"], ["train", "--help"], ["quantize", "--help"], ["serve", "--help"], ["predict", "--help"]):
        r = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (argv, r.stderr)
        assert "usage:" in r.stdout


def test_cli_train_without_tensorflow_says_which_extra():
    r = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, "train", "--out", "/tmp/never", "--epochs", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "hybrid-vision[quantize]" in r.stderr or "blocked" in r.stderr


def test_edge_extra_resolves_without_tensorflow_or_keras(tmp_path):
    """Resolve `.[edge]` as pip would on a fresh device, without installing anything."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    report = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
         "--report", str(report), f"{root}[edge]"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    # --no-deps resolves only the project; read what its edge extra asks for.
    meta = json.loads(report.read_text())["install"][0]["metadata"]
    edge_reqs = [req for req in meta.get("requires_dist", []) if "extra == \"edge\"" in req or "extra == 'edge'" in req]
    assert edge_reqs, meta.get("requires_dist")
    names = {req.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower() for req in edge_reqs}
    assert "ai-edge-litert" in names and "opencv-python-headless" in names
    assert not {n for n in names if n.startswith("tensorflow") or n in ("keras", "tf-keras")}
