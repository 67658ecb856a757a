"""`serve --collect DIR`: the service stores what it answered for the SDK's offloads, per API key, never the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from cloud_server import serve_app_in_thread
from edge_helpers import cached_tiny_bundle, tiny_images

from cloud.collect import key_folder
from edge_sdk import HybridClassifier
from edge_sdk.bundle import load_bundle
from edge_sdk.preprocess import encode_jpeg, encode_png, load_image, preprocess, resize
from edge_sdk.samples import read_index, read_samples

KEYS = ["first-key-0123456789", "second-key-9876543210"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return cached_tiny_bundle(tmp_path_factory, seed=0, threshold=1.01)  # every image goes to the cloud


def _offload(bundle, url, key, images):
    with HybridClassifier.from_bundle(bundle, cloud_url=url, api_key=key, probes=[], upload="jpeg") as clf:
        return [clf.predict(im) for im in images]


def test_each_key_gets_its_own_folder_of_what_infer_answered(bundle, tmp_path):
    root = tmp_path / "collected"
    first, second = tiny_images(6, seed=1), tiny_images(3, seed=2)
    with serve_app_in_thread([bundle], api_keys=KEYS, collect_dir=root, max_delay_ms=1) as server:
        a = _offload(bundle, server.url, KEYS[0], first)
        b = _offload(bundle, server.url, KEYS[1], second)
        png = encode_png(np.zeros((8, 8, 3), np.uint8))
        r = requests.post(server.url + "/v1/classify", data=png, timeout=30,  # classify is not collected
                          headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEYS[0]}"})
        assert r.status_code == 200
        assert server.app.state.hv.collector.flush(30)
    assert sorted(p.name for p in root.iterdir()) == sorted(key_folder(k) for k in KEYS)
    inp, pp = load_bundle(bundle).manifest.input, load_bundle(bundle).manifest.preprocess
    for key, images, answers in ((KEYS[0], first, a), (KEYS[1], second, b)):
        samples = list(read_samples(root / key_folder(key) / "tiny"))
        assert [s.meta.kind for s in samples] == ["cloud"] * len(images)
        for s, image, answer in zip(samples, images, answers, strict=True):
            sent = encode_jpeg(resize(load_image(image), 8, 8))  # what the SDK uploaded
            assert np.array_equal(preprocess(s.png, inp, pp), preprocess(sent, inp, pp))  # what the model saw
            assert s.meta.label == answer.label and np.allclose(s.meta.probabilities, answer.probabilities, atol=1e-5)
        assert read_index(root / key_folder(key) / "tiny")["labels"] == ["c0", "c1", "c2", "c3"]
    for f in root.rglob("*"):  # the keys themselves are written nowhere
        assert not any(k in f.name for k in KEYS)
        if f.is_file():
            assert not any(k.encode() in f.read_bytes() for k in KEYS)


def test_off_by_default(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with serve_app_in_thread([bundle], max_delay_ms=1) as server:
        _offload(bundle, server.url, None, tiny_images(3))
        assert server.app.state.hv.collector is None
    assert list(tmp_path.iterdir()) == []
