"""Bundles are written whole or not at all, and any defect is a BundleError naming file and cause."""

from __future__ import annotations

import json
import os

import pytest

from edge_sdk.bundle import Manifest, ModelFile, load_bundle, sha256_file, update_bundle, write_bundle
from edge_sdk.errors import BundleError
from edge_sdk.preprocess import InputSpec


def make(tmp_path, name="b", payload=b"model-bytes"):
    m = Manifest(name="demo", labels=["cat", "dog"], input=InputSpec(height=8, width=8),
                 models={"cloud": ModelFile(file="cloud.keras", format="keras")})
    return write_bundle(tmp_path / name, m, {"cloud.keras": payload})


def test_write_then_load_roundtrip(tmp_path):
    b = make(tmp_path)
    loaded = load_bundle(b.path)
    assert loaded.labels == ["cat", "dog"]
    assert loaded.manifest.models["cloud"].sha256 == sha256_file(b.path / "cloud.keras")
    assert (b.path / "labels.txt").read_text() == "cat\ndog\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_tampered_model_file(tmp_path):
    b = make(tmp_path)
    (b.path / "cloud.keras").write_bytes(b"evil")
    with pytest.raises(BundleError, match=r"cloud\.keras: sha256 mismatch for the cloud model"):
        load_bundle(b.path)


def test_missing_model_file(tmp_path):
    b = make(tmp_path)
    os.remove(b.path / "cloud.keras")
    with pytest.raises(BundleError, match="cloud model file is missing"):
        load_bundle(b.path)


def test_truncated_manifest(tmp_path):
    b = make(tmp_path)
    mp = b.path / "manifest.json"
    mp.write_text(mp.read_text()[:40])
    with pytest.raises(BundleError, match=r"manifest\.json: manifest is not valid JSON"):
        load_bundle(b.path)


def test_missing_manifest_and_missing_dir(tmp_path):
    b = make(tmp_path)
    os.remove(b.path / "manifest.json")
    with pytest.raises(BundleError, match="manifest is missing"):
        load_bundle(b.path)
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "nope")


def test_unknown_major_version(tmp_path):
    b = make(tmp_path)
    mp = b.path / "manifest.json"
    raw = json.loads(mp.read_text())
    raw["schema_version"] = "2.0"
    mp.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version '2.0' is not supported"):
        load_bundle(b.path)


@pytest.mark.parametrize("labels, words", [(["only"], "at least 2 labels"), (["a", "a"], "unique")])
def test_bad_labels_in_manifest(tmp_path, labels, words):
    b = make(tmp_path)
    mp = b.path / "manifest.json"
    raw = json.loads(mp.read_text())
    raw["labels"] = labels
    mp.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=words):
        load_bundle(b.path)


def test_labels_file_disagreeing_with_manifest(tmp_path):
    b = make(tmp_path)
    (b.path / "labels.txt").write_text("cat\nfox\n")
    with pytest.raises(BundleError, match="labels.txt: labels do not match"):
        load_bundle(b.path)


def test_model_file_names_cannot_escape_the_bundle():
    with pytest.raises(ValueError, match="plain file name"):
        ModelFile(file="../../etc/passwd", format="keras")


def test_update_replaces_whole_and_keeps_other_files(tmp_path):
    b = make(tmp_path)
    (b.path / "report.png").write_bytes(b"png")  # extra files travel with the bundle
    m = b.manifest.model_copy(deep=True)
    m.models["edge"] = ModelFile(file="edge_int8.tflite", format="tflite-int8")
    nb = update_bundle(b, m, {"edge_int8.tflite": b"tflite"})
    loaded = load_bundle(nb.path)
    assert set(loaded.manifest.models) == {"cloud", "edge"}
    assert (nb.path / "report.png").read_bytes() == b"png"


def test_failed_write_leaves_old_bundle_untouched(tmp_path):
    b = make(tmp_path)
    before = (b.path / "manifest.json").read_bytes()
    m = b.manifest.model_copy(deep=True)
    m.models["edge"] = ModelFile(file="edge_int8.tflite", format="tflite-int8")
    with pytest.raises(BundleError, match="was not given"):
        write_bundle(b.path, m, {"cloud.keras": b"new"})
    with pytest.raises(FileNotFoundError):
        write_bundle(b.path, b.manifest, {"cloud.keras": tmp_path / "does-not-exist"})
    assert (b.path / "manifest.json").read_bytes() == before
    load_bundle(b.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
