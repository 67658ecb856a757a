"""What the service holds while it runs: the served models, their engines, the decode pool, readiness."""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge_sdk.bundle import Bundle
from edge_sdk.errors import BundleError
from edge_sdk.protocol import INPUT_NAME, LABEL_OUTPUT, PROBS_OUTPUT

from .collect import CloudCollector
from .engine import ModelEngine
from .errors import ApiError
from .inputs import Job, ModelInput
from .metrics import Metrics
from .settings import Settings


@dataclass
class EdgeArtifact:
    """The edge model and manifest, held in memory so a bundle swapped on disk cannot mismatch its ETag."""

    file: str
    data: bytes
    sha256: str
    manifest_json: bytes
    manifest_etag: str

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> EdgeArtifact | None:
        if not bundle.has("edge"):
            return None
        path = bundle.model_path("edge")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha != bundle.manifest.models["edge"].sha256:
            raise BundleError(f"{path}: sha256 changed since the bundle was verified")
        manifest = {
            "name": bundle.manifest.name, "version": bundle.manifest.version,
            "manifest": bundle.manifest.model_dump(mode="json"),
            "edge": {"file": path.name, "sha256": sha, "size": len(data)},
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        return cls(path.name, data, sha, body, hashlib.sha256(body).hexdigest())


@dataclass
class ServedModel:
    """A model as the endpoints see it: its bundle (labels, manifest, edge model) and the engine that runs it."""

    name: str
    bundle: Bundle
    engine: ModelEngine
    spec: ModelInput
    edge: EdgeArtifact | None
    name_json: str = field(init=False, repr=False)  # the name and labels as JSON strings, encoded once
    labels_json: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name_json = json.dumps(self.name, ensure_ascii=False)
        self.labels_json = [json.dumps(lb, ensure_ascii=False) for lb in self.labels]

    @property
    def labels(self) -> list[str]:
        return self.bundle.manifest.labels

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    def metadata(self) -> dict:
        m, (h, w, c) = self.bundle.manifest, self.spec.shape
        return {
            "name": self.name, "versions": [m.version], "platform": f"keras_{self.engine.backend}",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, h, w, c]}],
            "outputs": self._outputs(),
            "parameters": {
                "accepts": ["BYTES [-1]: PNG/JPEG/BMP/WebP images (base64 in JSON, raw as binary tensor data)",
                            "UINT8 [-1, H, W, 1|3|4]: RGB pixels, any size",
                            f"FP32 [-1, {h}, {w}, {c}]: preprocessed as the manifest says"],
                "labels": m.labels, "input": m.input.model_dump(), "preprocess": m.preprocess.model_dump(),
                "max_batch_size": self.engine.max_batch_size, "max_request_images": self.spec.max_images,
                "edge_model": self.edge.sha256 if self.edge else None, "task": m.task,
            },
        }

    @property
    def is_detector(self) -> bool:
        """A detect bundle: boxes out, on /v1/detect and v2 infer (not /v1/classify)."""
        return self.bundle.manifest.task == "detect"

    def _outputs(self) -> list[dict]:
        m = self.bundle.manifest
        if m.task == "detect":
            k = m.detection.max_detections if m.detection else -1
            return [{"name": "boxes", "datatype": "FP32", "shape": [-1, k, 4]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, k]},
                    {"name": "classes", "datatype": "INT64", "shape": [-1, k]},
                    {"name": "count", "datatype": "INT32", "shape": [-1]}]
        return [{"name": PROBS_OUTPUT, "datatype": "FP32", "shape": [-1, len(m.labels)]},
                {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]}]


@dataclass
class ServiceState:
    settings: Settings
    models: dict[str, ServedModel]
    metrics: Metrics
    decode_pool: ThreadPoolExecutor | None = None
    draining: bool = False
    warmup_error: str | None = None
    warm_task: asyncio.Task | None = field(default=None, repr=False)
    collector: CloudCollector | None = None  # serve --collect: what infer answered, per key

    @property
    def ready(self) -> bool:
        return (not self.draining and self.warmup_error is None and self.decode_pool is not None
                and all(sm.engine.ready and sm.engine.running for sm in self.models.values()))

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        if self.warmup_error:
            return f"warm-up failed: {self.warmup_error}"
        return "warming up"

    def resolve(self, name: str | None, version: str | None = None) -> ServedModel:
        """The served model by name (None: the only one) and, if given, version (each serves one: its bundle's)."""
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise ApiError(400, f"several models are served; pass ?model= (one of {sorted(self.models)})")
        sm = self.models.get(name)
        if sm is None:
            raise ApiError(404, f"unknown model {name!r}; served: {sorted(self.models)}")
        if version is not None and version != sm.version:
            raise ApiError(404, f"model {name!r} has no version {version!r}; served: [{sm.version!r}]")
        return sm

    async def in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    def collect(self, scope: dict, sm: ServedModel, job: Job, probs) -> None:
        """Hand an answered infer request to the collector, if one is configured (no I/O here).

        The collector's writer thread decodes the request's body again (``job.run``) rather than the engine
        handing its tensor back: the engine may run elsewhere (a Ray replica), and collection is opt-in.
        """
        if self.collector is not None and isinstance(probs, np.ndarray):  # classifiers; a detector's outputs are not
            m = sm.bundle.manifest
            client = scope.get("state", {}).get("client")
            self.collector.offer(client, sm.name, m.labels, m.version, m.preprocess,
                                 lambda: job.run(sm.spec)[0], probs)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
