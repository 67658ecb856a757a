"""Opt-in collection on the device, against a real server: what is kept, bounds, a full disk, a crash mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cloud_server import serve_in_thread
from edge_helpers import cached_tiny_bundle, tiny_images

from edge_sdk import HybridClassifier
from edge_sdk.collect import audit_estimate, wilson_interval
from edge_sdk.options import CollectConfig
from edge_sdk.preprocess import load_image, resize
from edge_sdk.samples import SampleMeta, SampleStore, SampleStoreError, read_index, read_samples, sample_files

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 0.283  # the tiny model's int8 max_prob is 0.277-0.289 on these images: some confident, some not


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return cached_tiny_bundle(tmp_path_factory, seed=0, threshold=THRESHOLD)


@pytest.fixture(scope="module")
def cloud_url(bundle):
    with serve_in_thread([bundle], max_delay_ms=1) as url:
        yield url


def _collecting(bundle, url, folder, **collect):
    cfg = CollectConfig(dir=folder, **{"audit_rate": 1.0, "seed": 0, **collect})
    return HybridClassifier.from_bundle(bundle, cloud_url=url, probes=[], collect=cfg)


def _resized(img: np.ndarray) -> np.ndarray:
    return resize(load_image(img), 8, 8)


def test_offloads_and_audits_are_kept_with_both_answers(bundle, cloud_url, tmp_path):
    images = tiny_images(30)
    with HybridClassifier.from_bundle(bundle, cloud_url=cloud_url, probes=[], mode="cloud_only") as cloud:
        truth = [cloud.predict(im).label for im in images]
    with _collecting(bundle, cloud_url, tmp_path / "c") as clf:
        preds = [clf.predict(im) for im in images]
        assert clf.flywheel.flush(30)
        stats = clf.stats().collection
    offloaded = [i for i, p in enumerate(preds) if p.source == "cloud"]
    confident = [i for i, p in enumerate(preds) if p.reason == "confident"]
    assert offloaded and confident  # the threshold splits this model's answers
    assert stats.stored == {"offload": len(offloaded), "audit": len(confident)}
    assert stats.audits_asked == len(confident) and stats.audit_bytes > 0 and stats.disk_full == 0
    samples = list(read_samples(tmp_path / "c"))
    assert [s.meta.kind for s in samples].count("offload") == len(offloaded)
    for s in samples:  # answered one at a time, so samples are in predict order within each kind
        i = (offloaded if s.meta.kind == "offload" else confident).pop(0)
        assert np.array_equal(s.image(), _resized(images[i]))  # the image the edge ran on, lossless
        assert s.meta.label == truth[i]  # the cloud's answer
        assert len(s.meta.probabilities) == 4 and abs(sum(s.meta.probabilities) - 1) < 1e-4
        if s.meta.kind == "audit":
            assert s.meta.edge_label == preds[i].label and s.meta.reason == "confident"
    index = read_index(tmp_path / "c")
    assert index["labels"] == ["c0", "c1", "c2", "c3"] and index["count"] == len(samples)


def test_bounded_on_disk_oldest_first(tmp_path):
    store = SampleStore(tmp_path / "s", labels=["a", "b"], max_bytes=4000, fsync=False)
    rng = np.random.default_rng(0)
    seqs = [store.put(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), SampleMeta(kind="offload", time=float(i)))
            for i in range(40)]
    on_disk = [s for s, _ in sample_files(tmp_path / "s")]
    assert store.evicted > 0 and on_disk == seqs[-len(on_disk):]  # the newest kept, the oldest gone
    assert sum(p.stat().st_size for _, p in sample_files(tmp_path / "s")) == store.bytes <= 4000
    store.close()
    again = SampleStore(tmp_path / "s", labels=["a", "b"], max_bytes=4000)
    assert again.seqs() == on_disk and again.put(np.zeros((8, 8, 3), np.uint8), SampleMeta("audit", 0.0)) > seqs[-1]
    with pytest.raises(SampleStoreError, match="other labels"):
        SampleStore(tmp_path / "s", labels=["x", "y"])


def test_full_disk_loses_nothing_stored_and_never_fails_predict(bundle, cloud_url, tmp_path):
    """The disk refuses some writes with ENOSPC (the kernel's: the temp files point at /dev/full)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to make the kernel answer ENOSPC")
    folder = tmp_path / "c"
    images = tiny_images(24, seed=3)
    with _collecting(bundle, cloud_url, folder, audit_rate=1.0) as clf:
        for im in images[:8]:
            clf.predict(im)
        assert clf.flywheel.flush(30)
        before = {p.name: p.read_bytes() for _, p in sample_files(folder)}
        nxt = clf.flywheel.collector.store._next
        for seq in range(nxt, nxt + 5):  # the next five sample writes meet a full disk
            os.symlink("/dev/full", folder / f".{seq:012d}.png.tmp")
        preds = [clf.predict(im) for im in images[8:]]
        assert clf.flywheel.flush(30)
        stats = clf.stats().collection
    assert len(preds) == 16 and all(p.label for p in preds)  # every predict answered
    assert stats.disk_full == 5 and stats.write_errors == 0
    assert stats.samples == len(before) + 16 - 5
    after = {p.name: p.read_bytes() for _, p in sample_files(folder)}
    assert all(after[name] == data for name, data in before.items())  # nothing already stored was touched
    assert not list(folder.glob(".*.tmp"))  # the refused temp files were removed
    assert len(list(read_samples(folder))) == len(after)


CRASHING_WRITER = """
import sys, numpy as np
from edge_sdk.samples import SampleMeta, SampleStore
store = SampleStore(sys.argv[1], labels=["a", "b"])
rng = np.random.default_rng(0)
for i in range(100000):
    seq = store.put(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), SampleMeta(kind="offload", time=float(i)))
    print(seq, flush=True)
"""


def test_a_crash_mid_write_loses_nothing_already_stored(tmp_path):
    folder = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    stored = []
    try:
        while len(stored) < 40:
            line = proc.stdout.readline()
            assert line, "the writer exited early"
            stored.append(int(line))
        time.sleep(0.05)  # let it get well into another write
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no index written
        proc.wait(30)
    # and what a crash inside a write leaves, for certain: a half-written temp file and an index that lags
    (folder / f".{stored[-1] + 10_000:012d}.png.tmp").write_bytes(b"\x89PNG\r\n\x1a\n half a sample")
    (folder / "index.json").write_text('{"format": "hybrid-vision-samples", "labels": ["a", "b"], "samples": [[0')
    store = SampleStore(folder, labels=["a", "b"])
    assert set(stored) <= set(store.seqs())  # every sample reported stored is still listed
    for seq in stored:
        assert store.read(seq).image().shape == (32, 32, 3)
    assert not list(folder.glob(".*.tmp"))
    assert read_index(folder)["samples"] == [[s, (folder / f"{s:012d}.png").stat().st_size] for s in store.seqs()]
    assert store.put(np.zeros((4, 4, 3), np.uint8), SampleMeta(kind="audit", time=0.0)) > max(store.seqs()[:-1])


NO_OPT_IN = """
import json, sys
import numpy as np
from edge_sdk import HybridClassifier
bundle, url, dead = sys.argv[1:4]
rng = np.random.default_rng(5)
images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(20)]
reasons = []
for cloud_url in (url, dead):
    with HybridClassifier.from_bundle(bundle, cloud_url=cloud_url, probes=[], deadline_ms=3000) as clf:
        reasons += [str(clf.predict(im).reason) for im in images]
print(json.dumps(sorted(set(reasons))))
"""


def test_nothing_is_written_without_opt_in(bundle, cloud_url, tmp_path):
    """Confident, offloaded and cloud-down answers, with no collection configured: no file appears anywhere
    the process could write by default (its working directory, home, temp dir) or in the bundle."""
    home, cwd, tmp = (tmp_path / n for n in ("home", "cwd", "tmp"))
    for d in (home, cwd, tmp):
        d.mkdir()
    bundle_files = {p: p.stat().st_mtime_ns for p in bundle.iterdir()}
    dead = f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "TMPDIR": str(tmp)}
    r = subprocess.run([sys.executable, "-c", NO_OPT_IN, str(bundle), cloud_url, dead], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    reasons = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"confident", "low_confidence", "cloud_error:connection"} <= set(reasons)
    assert [list(d.rglob("*")) for d in (home, cwd, tmp)] == [[], [], []]
    assert {p: p.stat().st_mtime_ns for p in bundle.iterdir()} == bundle_files


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_audit_estimate_and_its_interval():
    metas = [SampleMeta(kind="audit", time=0.0, label="a", edge_label="a" if i < 45 else "b") for i in range(50)]
    est = audit_estimate(metas + [SampleMeta(kind="offload", time=0.0, label="a")])
    assert (est.n, est.agree, est.accuracy) == (50, 45, 0.9)
    assert est.low < 0.9 < est.high and abs(est.low - 0.7864) < 1e-3 and abs(est.high - 0.9565) < 1e-3
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_collect_config_is_checked(bundle):
    with pytest.raises(ValueError, match="audit_rate"):
        CollectConfig(dir="x", audit_rate=1.5)
    with pytest.raises(TypeError, match="CollectConfig"):
        HybridClassifier.from_bundle(bundle, collect="/tmp/x")
