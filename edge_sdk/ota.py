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
checked (input shape, classes, quantization). Any failure raises
:class:`UpdateError`.

This module only fetches and verifies: :func:`fetch_update` yields a
:class:`VerifiedUpdate`, and the model that asked applies it under its own lock
(``HybridClassifier.apply_update``), so nothing here reaches into a classifier.
:func:`persist_update` writes the verified model, its quantization and its
threshold into the bundle on disk (atomically, see
:func:`edge_sdk.bundle.update_bundle`), so a restart keeps the update.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from .bundle import Bundle, Manifest, update_bundle
from .client import CloudClient, Reply, Sink, deadline_after
from .errors import CloudError, ModelLoadError, UpdateError
from .runtime import LocalModel

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class UpdateResult:
    """What ``check_for_update`` did."""

    updated: bool
    sha256: str  # the edge model serving now
    previous_sha256: str | None = None
    bytes_downloaded: int = 0
    threshold: float | None = None
    persisted: bool = False  # written into the bundle on disk, so a restart keeps it
    persist_error: str | None = None


@dataclass(frozen=True)
class VerifiedUpdate:
    """A downloaded edge model whose sha256 matched every header and the manifest, loaded and checked.

    ``path`` holds the verified bytes only while :func:`fetch_update`'s context is open.
    """

    model: LocalModel
    manifest: Manifest  # the server's manifest: routing (threshold, metric), version, the edge entry
    path: Path
    bytes_downloaded: int

    @property
    def sha256(self) -> str:
        return self.model.sha256


class _HashingFile(Sink):
    def __init__(self, f: IO[bytes], max_bytes: int) -> None:
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
    """Read an ETag.

    Args:
        value: the ETag header, or None.

    Returns:
        The sha256 inside it (quotes and a weak ``W/`` prefix removed, lower case), or None.
    """
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower() or None


def parse_manifest(content: bytes) -> tuple[Manifest, str]:
    """Read the server's ``?part=manifest`` document.

    Args:
        content: the response body.

    Returns:
        The bundle manifest, and the edge sha256 the server says it serves.

    Raises:
        UpdateError: the document is not JSON of the expected shape.
    """
    try:
        doc = json.loads(content)
        manifest = Manifest.model_validate(doc["manifest"])
        sha = str(doc["edge"]["sha256"]).lower()
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        raise UpdateError(f"the server's edge manifest is malformed: {str(e)[:200]}") from None
    return manifest, sha


@contextmanager
def fetch_update(
    cloud: CloudClient,
    local: Manifest,
    current_sha256: str | None,
    *,
    deadline_ms: float = 60_000.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tmp_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    backend: str | Sequence[str] | None = None,
) -> Iterator[VerifiedUpdate | None]:
    """Ask the server for a newer edge model; yield it verified and loaded, or None when we are current.

    Args:
        cloud: the client of the server that serves this bundle's model.
        local: this device's bundle manifest: the update must have its labels, input and preprocessing.
        current_sha256: the edge model serving now (sent as If-None-Match), or None.
        deadline_ms: for the whole check, both downloads included.
        max_bytes: a larger download is refused.
        tmp_dir: where the download is written while it is verified (default: the system's temp dir).
        num_threads: interpreter threads for the new model.
        backend: interpreter backend(s) for the new model.

    Yields:
        The verified update (its file exists until the context closes), or None on 304.

    Raises:
        UpdateError: the server failed or refused, or the download did not verify or load.
    """
    deadline = deadline_after(deadline_ms)
    headers = {"If-None-Match": f'"{current_sha256}"'} if current_sha256 else {}
    path = f"/v1/models/{cloud.model_name}/edge"
    fd, tmp = tempfile.mkstemp(prefix=".hv-edge-", suffix=".tflite", dir=tmp_dir)
    try:
        reply, sink = _download(cloud, path, deadline, headers, fd, max_bytes)
        if reply.status == 304:
            yield None
            return
        if reply.status != 200:
            raise UpdateError(f"update check failed: the server answered {reply.status}")
        got = sink.h.hexdigest()
        _check_headers(got, reply.headers)
        manifest, manifest_sha = _fetch_manifest(cloud, path, deadline)
        _check_manifest(got, manifest, manifest_sha, local)
        model = _load(tmp, got, manifest, num_threads, backend)
        yield VerifiedUpdate(model, manifest, Path(tmp), sink.size)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def persist_update(bundle: Bundle, update: VerifiedUpdate) -> Bundle:
    """Write the verified model, its quantization and threshold into ``bundle`` on disk.

    Args:
        bundle: the device's bundle.
        update: the verified update (while :func:`fetch_update`'s context is open).

    Returns:
        The new bundle.

    Raises:
        OSError, BundleError: the disk refused (read-only, full); the bundle on disk is unchanged.
    """
    local, server = bundle.manifest, update.manifest
    name = local.models["edge"].file if "edge" in local.models else server.models["edge"].file
    entry = server.models["edge"].model_copy(update={"file": name})
    manifest = local.model_copy(deep=True, update={
        "models": {**local.models, "edge": entry}, "routing": server.routing, "version": server.version})
    return update_bundle(bundle, manifest, {name: update.path})


def _download(cloud: CloudClient, path: str, deadline: float, headers: Mapping[str, str], fd: int,
              max_bytes: int) -> tuple[Reply, _HashingFile]:
    """GET the model into the open temp file ``fd``, hashing it on the way."""
    with os.fdopen(fd, "w+b") as f:
        sink = _HashingFile(f, max_bytes)
        reply = _get(cloud, path, deadline, headers, sink)
        f.flush()
    return reply, sink


def _fetch_manifest(cloud: CloudClient, path: str, deadline: float) -> tuple[Manifest, str]:
    reply = _get(cloud, path + "?part=manifest", deadline, {}, None)
    if reply.status != 200:
        raise UpdateError(f"fetching the edge manifest failed: the server answered {reply.status}")
    return parse_manifest(reply.content)


def _get(cloud: CloudClient, path: str, deadline: float, headers: Mapping[str, str], sink: Sink | None) -> Reply:
    try:
        return cloud.get(path, deadline, headers=headers, sink=sink)
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


def _check_manifest(got: str, manifest: Manifest, manifest_sha: str, local: Manifest) -> None:
    edge = manifest.models.get("edge")
    if edge is None or edge.format != "tflite-int8":
        raise UpdateError("the server's manifest has no tflite-int8 edge model")
    for what, want in (("manifest", edge.sha256), ("manifest's edge entry", manifest_sha)):
        if want and got != want.lower():
            raise UpdateError(
                f"the downloaded model (sha256 {got[:12]}…) does not match the {what} ({want[:12]}…); "
                "the server may have changed model mid-update or the download is corrupt"
            )
    if manifest.labels != local.labels:
        raise UpdateError("the new model's labels differ from this bundle's; install the new bundle instead")
    if manifest.input != local.input or manifest.preprocess != local.preprocess:
        raise UpdateError("the new model expects different input or preprocessing; install the new bundle instead")


def _load(tmp: str, got: str, manifest: Manifest, num_threads: int | None,
          backend: str | Sequence[str] | None) -> LocalModel:
    edge = manifest.models["edge"]
    try:
        model = LocalModel(
            tmp, num_threads=num_threads, backend=backend, expected_sha256=got,
            input_quant=edge.input_quant, output_quant=edge.output_quant,
        )
        model.check_fits(manifest.input, len(manifest.labels))
    except ModelLoadError as e:
        raise UpdateError(f"the downloaded model was refused: {e}") from e
    return model
