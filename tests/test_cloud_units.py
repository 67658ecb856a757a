"""The cloud service's parts on their own: batcher, rate limiter, keys, settings, compiled model, start-up errors."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from edge_helpers import cached_tiny_bundle, tiny_keras

from cloud.batching import Batcher, BatcherClosedError, QueueFullError
from cloud.security import KeyChecker, RateLimiter, presented_key
from cloud.settings import Settings, SettingsError, load_settings, read_api_key_file
from edge_sdk.bundle import BundleError, Manifest, ModelFile, write_bundle
from edge_sdk.preprocess import InputSpec, PreprocessSpec

# --- batcher -------------------------------------------------------------------------


class Recorder:
    """A model stand-in that doubles its input and records each batch it was given."""

    def __init__(self, gate: threading.Event | None = None, fail_on: float | None = None):
        self.batches: list[list[float]] = []
        self.gate, self.fail_on = gate, fail_on
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(x[:, 0].tolist())
        if self.fail_on is not None and self.fail_on in x[:, 0]:
            raise RuntimeError("model failed")
        return x * 2


def run(coro):
    return asyncio.run(coro)


def test_batcher_merges_concurrent_requests_and_answers_each_in_order():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=4, max_delay_ms=50, queue_size=100)
        await b.start()
        outs = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32)) for i in range(10)))
        await b.close()
        return outs

    outs = run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]
    assert sum(rec.batches, []) == list(range(10))  # FIFO
    assert len(rec.threads) == 1 and next(iter(rec.threads)).startswith("model-")


def test_batcher_never_splits_a_request_and_runs_an_oversize_one_alone():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=4, max_delay_ms=50, queue_size=100)
        await b.start()
        sizes = [3, 3, 10, 1]
        start = np.cumsum([0] + sizes[:-1])
        outs = await asyncio.gather(*(b.submit(np.arange(s0, s0 + n, dtype=np.float32)[:, None])
                                      for s0, n in zip(start, sizes, strict=False)))
        await b.close()
        return sizes, outs

    sizes, outs = run(main())
    assert [len(o) for o in outs] == sizes
    assert [len(x) for x in rec.batches] == [3, 3, 10, 1]  # 3+3 > 4: the second starts the next batch
    assert np.concatenate(outs)[:, 0].tolist() == [2.0 * i for i in range(17)]


def test_batcher_queue_full_raises_and_close_drains():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_delay_ms=0, queue_size=2)
        await b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((1, 1), np.float32)))
        await asyncio.sleep(0.05)  # taken by the collector; the worker waits on the gate
        queued = [asyncio.ensure_future(b.submit(np.full((1, 1), i, np.float32))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert b.depth == 2
        with pytest.raises(QueueFullError):
            await b.submit(np.zeros((1, 1), np.float32))
        with pytest.raises(QueueFullError):
            b.check_capacity()
        gate.set()
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosedError):
            await b.submit(np.zeros((1, 1), np.float32))
        await closing
        return await asyncio.gather(first, *queued)

    outs = run(main())
    assert [float(o[0, 0]) for o in outs] == [0.0, 2.0, 4.0]  # everything queued before close was answered


def test_batcher_model_error_reaches_every_caller_in_the_batch_and_the_next_batch_works():
    rec = Recorder(fail_on=1.0)

    async def main():
        b = Batcher(rec, max_batch_size=4, max_delay_ms=50, queue_size=10)
        await b.start()
        res = await asyncio.gather(*(b.submit(np.full((1, 1), i, np.float32)) for i in range(3)),
                                   return_exceptions=True)
        after = await b.submit(np.full((1, 1), 7, np.float32))
        await b.close()
        return res, after

    res, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in res)
    assert float(after[0, 0]) == 14.0


def test_batcher_waits_only_for_requests_it_knows_are_coming():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=8, max_delay_ms=2000, queue_size=10)
        await b.start()
        t0 = time.perf_counter()
        await b.infer(lambda: asyncio.sleep(0, np.zeros((1, 1), np.float32)))
        lone = time.perf_counter() - t0

        async def slow_prepare(v, delay):
            await asyncio.sleep(delay)
            return np.full((1, 1), v, np.float32)

        t0 = time.perf_counter()
        await asyncio.gather(b.infer(lambda: slow_prepare(1, 0.0)), b.infer(lambda: slow_prepare(2, 0.2)))
        pair = time.perf_counter() - t0
        await b.close()
        return lone, pair

    lone, pair = run(main())
    assert lone < 0.5, "a lone request waited for the batch delay"
    assert rec.batches[-1] == [1.0, 2.0], "the announced second request was not waited for"
    assert pair < 1.5


def test_batcher_instances_run_batches_at_the_same_time():
    both = threading.Barrier(2, timeout=10)  # passes only if two batches are inside the model at once
    seen: list[int] = []

    def model(x):
        seen.append(len(x))
        both.wait()
        return x * 2

    async def main():
        b = Batcher(model, max_batch_size=1, max_delay_ms=0, queue_size=10, instances=2)
        await b.start()
        outs = await asyncio.gather(*(b.submit(np.full((1, 1), i, np.float32)) for i in range(4)))
        await b.close()
        return outs

    outs = run(main())
    assert [float(o[0, 0]) for o in outs] == [0.0, 2.0, 4.0, 6.0] and seen == [1, 1, 1, 1]


def test_plan_instances_defaults():
    from cloud.model import plan_instances

    assert plan_instances("tensorflow", cpus=2) == (2, 1)
    assert plan_instances("tensorflow", cpus=16) == (2, 8)
    assert plan_instances("torch", cpus=1) == (1, 1)
    assert plan_instances("jax", cpus=16) == (1, 16)  # the GPU path: one caller keeps a GPU fed
    assert plan_instances("tensorflow", instances=3, cpus=16) == (3, 5)
    assert plan_instances("tensorflow", instances=1, threads=4, cpus=2) == (1, 4)


def test_classify_body_is_json_for_any_label():
    import json
    from types import SimpleNamespace

    from cloud.image_endpoints import classify_body
    from cloud.state import ServedModel

    labels = ['say "hi"', "naïve\\path", "ok"]
    sm = ServedModel("m\"1", SimpleNamespace(labels=labels), None, None, None)
    doc = json.loads(classify_body(sm, np.array([0.2, 0.5, 0.3], np.float32), 2))
    assert doc["model_name"] == 'm"1' and doc["label"] == "naïve\\path"
    assert [t["label"] for t in doc["top_k"]] == ["naïve\\path", "ok"]
    assert doc["confidence"] == pytest.approx(0.5) and doc["top_k"][1]["confidence"] == pytest.approx(0.3)
    with pytest.raises(RuntimeError, match="non-finite"):
        classify_body(sm, np.array([np.nan, 0.5, 0.5], np.float32), 3)


# --- security ----------------------------------------------------------------------


def test_rate_limiter_token_bucket():
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a")
    assert wait == pytest.approx(0.5)
    assert rl.acquire("b") == 0.0  # another client, another bucket
    now[0] += 0.5
    assert rl.acquire("a") == 0.0
    assert rl.acquire("a") > 0
    now[0] += 100
    assert [rl.acquire("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills only up to the burst


def test_rate_limiter_forgets_old_clients():
    rl = RateLimiter(rate=1.0, burst=1, max_clients=3)
    for c in "abcd":
        rl.acquire(c)
    assert len(rl._buckets) == 3


def test_key_checker_and_headers():
    kc = KeyChecker(["alpha-key-123", "beta-key-4567"])
    assert kc.identify(b"beta-key-4567") == "key1"
    assert kc.identify(b"alpha-key-12") is None and kc.identify(None) is None and kc.identify(b"") is None
    assert presented_key([(b"authorization", b"Bearer  tok-123 ")]) == b"tok-123"
    assert presented_key([(b"authorization", b"bearer tok")]) == b"tok"
    assert presented_key([(b"authorization", b"Basic dXNlcjpwYXNz")]) is None
    assert presented_key([(b"x-api-key", b"k-1")]) == b"k-1"
    assert not KeyChecker([]).enabled


def test_settings_from_environment_keep_keys_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("HV_API_KEYS", "first-key-1234, second-key-5678,")
    monkeypatch.setenv("HV_MAX_BATCH_SIZE", "16")
    s = Settings()
    assert s.key_values() == ["first-key-1234", "second-key-5678"] and s.max_batch_size == 16
    assert "first-key" not in repr(s) and "first-key" not in str(s) and "2 key(s)" in repr(s)
    assert "first-key" not in s.model_dump_json()
    monkeypatch.setenv("HV_API_KEYS", "short")
    with pytest.raises(SettingsError, match="at least 8"):
        load_settings()
    monkeypatch.delenv("HV_API_KEYS")
    with pytest.raises(SettingsError, match="go together"):
        load_settings(ssl_certfile=tmp_path / "c.pem")
    f = tmp_path / "keys"
    f.write_text("# comment\n\nkey-from-file-1\n")
    assert read_api_key_file(f) == ["key-from-file-1"]
    f.write_text("# nothing\n")
    with pytest.raises(SettingsError, match="no keys"):
        read_api_key_file(f)


# --- the model -----------------------------------------------------------------------


def test_buckets():
    from cloud.model import buckets_for

    assert buckets_for(1) == [1]
    assert buckets_for(32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert buckets_for(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    for m in (5, 33, 100, 256):  # padding a batch up to its bucket adds at most half of it
        b = buckets_for(m)
        assert b[-1] == m
        assert all(min(x for x in b if x >= n) <= 1.5 * n for n in range(1, m + 1))


def test_compiled_model_chunks_any_batch_size_and_matches_keras(tmp_path_factory):
    import keras

    from cloud.model import CloudModel

    path = cached_tiny_bundle(tmp_path_factory, seed=0)
    m = CloudModel.from_path(path, max_batch_size=4)
    m.warmup()
    assert m.ready.is_set() and not m.apply_softmax
    ref = keras.saving.load_model(path / "cloud.keras")
    x = np.random.default_rng(0).random((11, *m.input_shape), dtype=np.float32)
    want = np.asarray(ref(x, training=False))
    for n in (1, 3, 4, 11):  # 11 = chunks of 4 + 4 + 3
        np.testing.assert_allclose(m.predict(x[:n]), want[:n], atol=1e-5)


def test_a_model_that_outputs_logits_gets_a_softmax(tmp_path):
    import keras

    from cloud.model import CloudModel

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(inp))  # no softmax
    model = keras.Model(inp, out)
    model.save(tmp_path / "m.keras")
    manifest = Manifest(name="logits", labels=["a", "b", "c"],
                        input=InputSpec(height=8, width=8, channels=1, color="GRAY"),
                        preprocess=PreprocessSpec(), models={"cloud": ModelFile(file="cloud.keras", format="keras")})
    write_bundle(tmp_path / "b", manifest, {"cloud.keras": tmp_path / "m.keras"})
    m = CloudModel.from_path(tmp_path / "b", max_batch_size=2)
    m.warmup()
    assert m.apply_softmax
    p = m.predict(np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32) * 10)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (p >= 0).all()


def test_bundles_that_do_not_match_are_refused(tmp_path, tmp_path_factory):
    import shutil

    from cloud.app import create_app

    src = cached_tiny_bundle(tmp_path_factory, seed=0)
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    with open(bad / "cloud.keras", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        create_app([bad], Settings())
    with pytest.raises(BundleError, match="two bundles are named"):
        create_app([src, src], Settings())
    # a cloud model whose input does not match the manifest
    wrong = tiny_keras(size=16)
    wrong.save(tmp_path / "w.keras")
    manifest = Manifest(name="w", labels=["c0", "c1", "c2", "c3"],
                        input=InputSpec(height=8, width=8, channels=1, color="GRAY"),
                        models={"cloud": ModelFile(file="cloud.keras", format="keras")})
    write_bundle(tmp_path / "w", manifest, {"cloud.keras": tmp_path / "w.keras"})
    with pytest.raises(BundleError, match="does not match the manifest"):
        create_app([tmp_path / "w"], Settings())


def test_backend_cannot_change_once_keras_is_loaded():
    import keras  # noqa: F401  (loaded on the tensorflow backend)

    from cloud.model import BackendError, select_backend

    assert select_backend("tensorflow") == "tensorflow"
    with pytest.raises(BackendError, match="already loaded"):
        select_backend("jax")
    with pytest.raises(BackendError, match="unknown backend"):
        select_backend("mxnet")


def test_port_in_use_is_a_clean_error():
    from cloud.server import ServeError, bind

    s = bind("127.0.0.1", 0)
    s.listen()
    try:
        with pytest.raises(ServeError, match="cannot listen"):
            bind("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()
