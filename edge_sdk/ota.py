"""Over-the-air update of the edge model, verified before it is trusted.

The server's contract (cloud/app.py):

* ``GET {cloud}/v1/models/{name}/edge`` with ``If-None-Match: "<sha256 of our edge model>"``:
  304 when we are current; else 200 with the model bytes, ``ETag: "<sha256>"``
  and ``X-Edge-Model-Sha256: <sha256>``.
* ``GET {cloud}/v1/models/{name}/edge?part=manifest``: JSON
  ``{"name", "version", "manifest": <bundle manifest>, "edge": {"file", "sha256", "size"}}``.

The model is streamed into a temp file while hashed; its sha256 must equal the
ETag, the sha256 header and the manifest's (which also brings the labels, the
quantization and the recalibrated threshold). Then the model is loaded and
checked (input shape, classes, quantization) and only then swapped in. Any
failure raises :class:`UpdateError` and leaves the old model serving.

The verified model, its quantization and its threshold are also written into
the bundle on disk (atomically, see :func:`edge_sdk.bundle.update_bundle`), so a
restart keeps the update. If the disk refuses (read-only, full), the new model
still serves from memory and :attr:`UpdateResult.persist_error` says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from .bundle import Manifest, update_bundle
from .client import Sink, deadline_after
from .errors import BundleError, CloudError, ModelLoadError, UpdateError
from .runtime import LocalModel

if TYPE_CHECKING:
    from .hybrid import HybridClassifier

log = logging.getLogger(__name__)


@dataclass
class UpdateResult:
    updated: bool
    sha256: str  # the edge model serving now
    previous_sha256: str | None = None
    bytes_downloaded: int = 0
    threshold: float | None = None
    persisted: bool = False  # written into the bundle on disk, so a restart keeps it
    persist_error: str | None = None


class _HashingFile(Sink):
    def __init__(self, f: IO[bytes], max_bytes: int):
        self.f, self.max_bytes = f, max_bytes
        self.reset()

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.h.update(chunk)
        self.size += len(chunk)


def parse_etag(value: str | None) -> str | None:
    """The sha256 inside an ETag header (quotes and a weak ``W/`` prefix removed)."""
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower() or None


def parse_manifest(content: bytes) -> tuple[Manifest, str]:
    """The ``?part=manifest`` document -> (bundle manifest, edge sha256 the server says it serves)."""
    try:
        doc = json.loads(content)
        manifest = Manifest.model_validate(doc["manifest"])
        sha = str(doc["edge"]["sha256"]).lower()
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        raise UpdateError(f"the server's edge manifest is malformed: {str(e)[:200]}") from None
    return manifest, sha


def check_for_update(
    clf: HybridClassifier,
    *,
    deadline_ms: float = 60_000.0,
    max_bytes: int = 256 * 1024 * 1024,
    tmp_dir: str | os.PathLike | None = None,
    persist: bool = True,
) -> UpdateResult:
    """Download, verify and swap in a newer edge model if the server has one; with ``persist``, also into the bundle."""
    if clf.cloud is None:
        raise UpdateError("no cloud_url configured: nowhere to check for updates")
    deadline = deadline_after(deadline_ms)
    current = clf.model.sha256 if clf.model is not None else None
    headers = {"If-None-Match": f'"{current}"'} if current else {}
    path = f"/v1/models/{clf.cloud.model_name}/edge"
    fd, tmp = tempfile.mkstemp(prefix=".hv-edge-", suffix=".tflite", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as f:
            sink = _HashingFile(f, max_bytes)
            reply = _get(clf, path, deadline, headers, sink)
            if reply.status == 304:
                return UpdateResult(False, current or "", current)
            if reply.status != 200:
                raise UpdateError(f"update check failed: the server answered {reply.status}")
            f.flush()
            got, size = sink.h.hexdigest(), sink.size
        _check_headers(got, reply.headers)
        mreply = _get(clf, path + "?part=manifest", deadline, {}, None)
        if mreply.status != 200:
            raise UpdateError(f"fetching the edge manifest failed: the server answered {mreply.status}")
        manifest, manifest_sha = parse_manifest(mreply.content)
        model = _verify_and_load(clf, tmp, got, manifest, manifest_sha)
        if model.sha256 == current:
            return UpdateResult(False, current, current, size)
        persist_error = _persist(clf, tmp, manifest) if persist else None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    old = clf.swap_model(model, threshold=manifest.routing.threshold, metric=manifest.routing.metric)
    log.info("edge model updated %s -> %s", (old.sha256[:12] if old else None), model.sha256[:12])
    return UpdateResult(True, model.sha256, current, size, clf.threshold,
                        persisted=persist and persist_error is None, persist_error=persist_error)


def _persist(clf: HybridClassifier, tmp: str, server: Manifest) -> str | None:
    """Write the verified model, its quantization and threshold into the bundle on disk; None, or why not."""
    local = clf.bundle.manifest
    name = local.models["edge"].file if "edge" in local.models else server.models["edge"].file
    entry = server.models["edge"].model_copy(update={"file": name})
    manifest = local.model_copy(deep=True, update={
        "models": {**local.models, "edge": entry}, "routing": server.routing, "version": server.version})
    try:
        clf.bundle = update_bundle(clf.bundle, manifest, {name: tmp})
    except (OSError, BundleError) as e:
        log.warning("edge model updated in memory only: cannot write it into %s: %s", clf.bundle.path, e)
        return f"{type(e).__name__}: {e}"
    return None


def _get(clf: HybridClassifier, path: str, deadline: float, headers: Mapping[str, str], sink):
    try:
        return clf.cloud.get(path, deadline, headers=headers, sink=sink)
    except CloudError as e:
        raise UpdateError(f"update check failed: {e}") from e


def _check_headers(got: str, headers: Mapping[str, Any]) -> None:
    etag = parse_etag(headers.get("ETag"))
    declared = (headers.get("X-Edge-Model-Sha256") or "").strip().lower() or None
    if etag is None and declared is None:
        raise UpdateError("the server sent no ETag or sha256 header: cannot verify the download, refusing it")
    for what, want in (("ETag", etag), ("X-Edge-Model-Sha256", declared)):
        if want is not None and got != want:
            raise UpdateError(f"corrupt download: sha256 {got[:12]}… does not match the {what} {want[:12]}…")


def _verify_and_load(clf: HybridClassifier, tmp: str, got: str, manifest: Manifest, manifest_sha: str) -> LocalModel:
    edge = manifest.models.get("edge")
    if edge is None or edge.format != "tflite-int8":
        raise UpdateError("the server's manifest has no tflite-int8 edge model")
    for what, want in (("manifest", edge.sha256), ("manifest's edge entry", manifest_sha)):
        if want and got != want.lower():
            raise UpdateError(
                f"the downloaded model (sha256 {got[:12]}…) does not match the {what} ({want[:12]}…); "
                "the server may have changed model mid-update or the download is corrupt"
            )
    if manifest.labels != clf.labels:
        raise UpdateError("the new model's labels differ from this bundle's; install the new bundle instead")
    if manifest.input != clf.input or manifest.preprocess != clf.pp:
        raise UpdateError("the new model expects different input or preprocessing; install the new bundle instead")
    try:
        model = LocalModel(
            tmp, num_threads=clf.num_threads, backend=clf.backend, expected_sha256=got,
            input_quant=edge.input_quant, output_quant=edge.output_quant,
        )
        clf._check_model(model)
    except ModelLoadError as e:
        raise UpdateError(f"the downloaded model was refused: {e}") from e
    return model
