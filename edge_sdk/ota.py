"""Over-the-air update of the edge model, verified before it is trusted.

``GET {cloud}/v1/models/{name}/edge`` with ``If-None-Match: "<sha256 of our edge model>"``:
304 means we are current; 200 streams the new int8 model into a temp file while
hashing it. The sha256 must equal the ETag (and the manifest's, when the server
sends one); then the model is loaded and checked (input shape, classes,
quantization) and only then swapped in. Any failure raises :class:`UpdateError`
and leaves the old model serving.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Mapping

from .bundle import Manifest
from .client import Sink, deadline_after
from .errors import CloudError, ModelLoadError, UpdateError
from .runtime import LocalModel

if TYPE_CHECKING:
    from .hybrid import HybridClassifier

log = logging.getLogger(__name__)

MANIFEST_HEADER = "X-Model-Manifest"


@dataclass
class UpdateResult:
    updated: bool
    sha256: str  # the edge model serving now
    previous_sha256: str | None = None
    bytes_downloaded: int = 0
    threshold: float | None = None


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


def parse_manifest_header(value: str | None) -> Manifest | None:
    """The bundle manifest the server sent with the model: JSON, or base64 of JSON."""
    if not value:
        return None
    for decode in (lambda s: s, lambda s: base64.b64decode(s, validate=True).decode("utf-8")):
        try:
            return Manifest.model_validate(json.loads(decode(value)))
        except Exception:  # noqa: BLE001 - try the next encoding, then refuse below
            continue
    raise UpdateError(f"the server's {MANIFEST_HEADER} header is not a valid manifest")


def check_for_update(
    clf: "HybridClassifier",
    *,
    deadline_ms: float = 60_000.0,
    max_bytes: int = 256 * 1024 * 1024,
    tmp_dir: str | os.PathLike | None = None,
) -> UpdateResult:
    """Download, verify and swap in a newer edge model if the server has one."""
    if clf.cloud is None:
        raise UpdateError("no cloud_url configured: nowhere to check for updates")
    current = clf.model.sha256 if clf.model is not None else None
    headers = {"If-None-Match": f'"{current}"'} if current else {}
    path = f"/v1/models/{clf.cloud.model_name}/edge"
    fd, tmp = tempfile.mkstemp(prefix=".hv-edge-", suffix=".tflite", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as f:
            sink = _HashingFile(f, max_bytes)
            try:
                reply = clf.cloud.get(path, deadline_after(deadline_ms), headers=headers, sink=sink)
            except CloudError as e:
                raise UpdateError(f"update check failed: {e}") from e
            if reply.status == 304:
                return UpdateResult(False, current or "", current)
            if reply.status != 200:
                raise UpdateError(f"update check failed: the server answered {reply.status}")
            f.flush()
            got = sink.h.hexdigest()
            size = sink.size
        model, manifest = _verify_and_load(clf, tmp, got, reply.headers)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    if model.sha256 == current:
        return UpdateResult(False, current, current, size)
    threshold = manifest.routing.threshold if manifest is not None else None
    old = clf.swap_model(model, threshold=threshold, metric=manifest.routing.metric if manifest else None)
    log.info("edge model updated %s -> %s", (old.sha256[:12] if old else None), model.sha256[:12])
    return UpdateResult(True, model.sha256, current, size, clf.threshold)


def _verify_and_load(clf: "HybridClassifier", tmp: str, got: str, headers: Mapping[str, Any]) -> tuple[LocalModel, Manifest | None]:
    etag = parse_etag(headers.get("ETag"))
    manifest = parse_manifest_header(headers.get(MANIFEST_HEADER))
    if etag is None and manifest is None:
        raise UpdateError("the server sent no ETag or manifest: cannot verify the download, refusing it")
    if etag is not None and got != etag:
        raise UpdateError(f"corrupt download: sha256 {got[:12]}… does not match the ETag {etag[:12]}…")
    edge = manifest.models.get("edge") if manifest is not None else None
    if manifest is not None:
        if edge is None or edge.format != "tflite-int8":
            raise UpdateError("the server's manifest has no tflite-int8 edge model")
        if edge.sha256 and got != edge.sha256:
            raise UpdateError(f"corrupt download: sha256 {got[:12]}… does not match the manifest's {edge.sha256[:12]}…")
        if manifest.labels != clf.labels:
            raise UpdateError("the new model's labels differ from this bundle's; install the new bundle instead")
    try:
        model = LocalModel(
            tmp, num_threads=clf.num_threads, backend=clf.backend, expected_sha256=got,
            input_quant=edge.input_quant if edge else None, output_quant=edge.output_quant if edge else None,
        )
        clf._check_model(model)
    except ModelLoadError as e:
        raise UpdateError(f"the downloaded model was refused: {e}") from e
    return model, manifest
