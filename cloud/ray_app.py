"""The cloud service as a Ray Serve application: the same app and model code, on replicas Ray places,
restarts and scales.

    serve run cloud.ray_app:app bundles=/models/digits replicas=2      # or a `serve deploy` config (deploy/)
    hybrid-vision serve /models/digits --engine ray --replicas 2       # the same, from the CLI (cloud.ray_serve)

An application has two kinds of deployment:

* ``Ingress``: the service's own FastAPI app (``cloud.app.create_app``: every endpoint, auth, limits,
  errors, metrics), built with a :class:`RayEngine` per model in place of the local batcher. It reads
  bodies and writes answers; it never decodes an image or loads a model, so it needs no TensorFlow.
* one ``Model`` deployment per bundle. Each replica loads the bundle's ``CloudModel`` and warms it up
  before Ray routes to it, then answers Jobs (``cloud.inputs.Job``): decoded in its thread pool with
  ``Job.run`` (the shared decoding), batched with ``@serve.batch`` (``max_batch_size`` and
  ``max_delay_ms`` from the same settings), run on ``model_instances`` threads at once.

Faults: a replica that dies fails the requests it held with ``RayActorError``; the ingress sends each
again (:data:`RETRIES` times, to whichever replica Ray picks next), and past that answers 503 with
Retry-After, which the SDK retries. Ray starts a replacement replica by itself.

Everything Ray needs is imported here, so ``cloud`` without the ``scale`` extra never imports Ray.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.preprocess import cv2

from .app import create_app, model_input
from .batching import BatcherClosedError, Outputs, QueueFullError, run_batch, split_rows
from .engine import load_cloud_model
from .errors import ApiError, describe, error_response
from .inputs import InferAsk, Job, ModelInput
from .metrics import Metrics
from .model import configure_threads, plan_instances, select_backend
from .settings import Settings, load_settings

log = logging.getLogger("hybrid_vision.cloud")

RETRIES = 3  # sends of a request again after its replica died with it, before a 503
RETRY_BACKOFF_S = 0.05  # doubled each time: 0.05, 0.1, 0.2 s, while Ray's routers learn the replica is gone
INGRESS_MAX_ONGOING = 4096  # the ingress only awaits replicas; the model deployments' queues bound the work


# --- options ---------------------------------------------------------------------------------------


class ScaleOptions(BaseModel):
    """How many model replicas, on what: a fixed count, or autoscaling between two bounds."""

    model_config = ConfigDict(extra="forbid")

    replicas: int | None = Field(None, ge=1, description="a fixed number of replicas per model [1]")
    min_replicas: int | None = Field(None, ge=0, description="autoscaling: fewest replicas [1]")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling: most replicas")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="autoscaling: requests in flight per replica to aim for [max_batch_size]")
    upscale_delay_s: float = Field(3.0, ge=0, description="autoscaling: how long demand must last to add one")
    downscale_delay_s: float = Field(60.0, ge=0, description="autoscaling: how long idleness must last to remove one")
    cpus_per_replica: float = Field(1.0, ge=0, description="CPUs each replica reserves; also its model threads")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs each replica reserves; fractions share a GPU")
    ingress_replicas: int = Field(1, ge=1, description="replicas of the HTTP ingress")

    @model_validator(mode="after")
    def _one_way_to_scale(self):
        auto = self.min_replicas is not None or self.max_replicas is not None
        if auto and self.replicas is not None:
            raise ValueError("give either replicas (a fixed count) or min_replicas/max_replicas (autoscaling)")
        if auto and self.max_replicas is None:
            raise ValueError("autoscaling needs max_replicas")
        if auto and (self.min_replicas or 1) > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def model_deployment(self, settings: Settings) -> dict[str, Any]:
        """``Deployment.options`` for a model: replicas or autoscaling, resources, queue limits."""
        instances = _instances(settings, self.cpus_per_replica, self.gpus_per_replica)
        # enough requests per replica to fill a batch on every instance while the next ones decode
        ongoing = max(2 * settings.max_batch_size * instances, 8)
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            "max_ongoing_requests": ongoing, "max_queued_requests": settings.queue_size,
            "graceful_shutdown_timeout_s": settings.drain_timeout_s, "health_check_period_s": 2.0,
            "logging_config": logging_config(settings),
        }
        if self.autoscaling:
            target = self.target_ongoing_requests or float(settings.max_batch_size)
            opts["autoscaling_config"] = {
                "min_replicas": 1 if self.min_replicas is None else self.min_replicas,
                "initial_replicas": max(1, self.min_replicas or 1),
                "max_replicas": self.max_replicas, "target_ongoing_requests": min(target, ongoing),
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "metrics_interval_s": 0.5, "look_back_period_s": 2.0,
            }
        else:
            opts["num_replicas"] = self.replicas or 1
        return opts


class AppArgs(ScaleOptions):
    """The arguments of ``serve run cloud.ray_app:app`` and of a ``serve deploy`` config's ``args``."""

    bundles: list[str] | dict[str, str] = Field(
        default_factory=lambda: [b for b in os.environ.get("HV_BUNDLES", "").split(",") if b],
        description="bundle directories (or {name: directory}) [env HV_BUNDLES, comma-separated]")
    settings: dict[str, Any] = Field(default_factory=dict, description="service settings over the HV_* environment")

    @field_validator("bundles", mode="before")
    @classmethod
    def _split(cls, v):  # `serve run cloud.ray_app:app bundles=a,b` passes a string
        return [b.strip() for b in v.split(",") if b.strip()] if isinstance(v, str) else v


def logging_config(settings: Settings) -> dict[str, Any]:
    """Ray Serve's logging for our deployments: the service's level, and Ray's line per request (one at the
    ingress, one at the replica) only with ``access_log``, as in the local service."""
    return {"log_level": settings.log_level.upper(), "enable_access_log": settings.access_log}


def log_through_serve(settings: Settings) -> None:
    """In a replica, the service's own log lines (warm-up, lost replicas, internal errors) go where Ray Serve's
    go: the replica's log file under /tmp/ray/session_*/logs/serve/ and its stderr."""
    handlers = logging.getLogger("ray.serve").handlers
    for name in ("hybrid_vision", "cloud"):
        ours = logging.getLogger(name)
        ours.handlers, ours.propagate = list(handlers), False
        ours.setLevel(settings.log_level.upper())


def decode_threads(settings: Settings, cpus: float) -> int:
    """A replica's decode threads: as set, else one per CPU it reserves (the local default, 2..8, is sized for a
    whole machine; replicas share one, and a starting replica must not be starved by idle-spinning pools)."""
    return settings.decode_threads if "decode_threads" in settings.model_fields_set else max(1, round(cpus))


def _instances(settings: Settings, cpus: float, gpus: float = 0.0) -> int:
    """Model instances (concurrent batches) per replica: the service's own plan for the replica's share."""
    backend = "jax" if gpus > 0 else settings.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    return plan_instances(backend, settings.model_instances, settings.model_threads, cpus=max(1, round(cpus)))[0]


# --- the model replicas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInfo:
    """A batch a replica ran: the first request of each batch carries it, so the ingress counts it once."""

    images: int
    seconds: float


@dataclass(frozen=True)
class Reply:
    """A replica's answer to one Job: its rows of the outputs, or the 4xx its input earned."""

    outputs: Outputs | None = None
    ask: InferAsk | None = None
    batch: BatchInfo | None = None
    refused: tuple[int, str, dict[str, str]] | None = None  # (status, message, headers)


@serve.deployment
class Model:
    """One model replica: the bundle's compiled model, warmed up before Ray sends it work."""

    def __init__(self, name: str, bundle_path: str, settings: Settings, cpus: float = 1.0, gpus: float = 0.0):
        t0 = time.perf_counter()
        log_through_serve(settings)
        cv2.setNumThreads(1)  # decoding is parallel across the pool's threads, as in the local service
        backend = select_backend("jax" if gpus > 0 and not settings.backend else settings.backend)
        instances, threads = plan_instances(backend, settings.model_instances, settings.model_threads,
                                            cpus=max(1, round(cpus)))
        configure_threads(backend, threads)
        bundle = load_bundle(bundle_path, verify=True)
        self.model = load_cloud_model(bundle, name, settings.model_copy(update={"backend": backend}))
        self.spec: ModelInput = model_input(bundle, settings)
        self.decode_pool = ThreadPoolExecutor(decode_threads(settings, cpus), thread_name_prefix="decode")
        self.model_pool = ThreadPoolExecutor(instances, thread_name_prefix="model")
        t_load = time.perf_counter() - t0
        self.model.warmup()
        gc.collect()
        gc.freeze()  # as the local service does: keep Keras' long-lived objects out of every GC pass
        mbs = settings.max_batch_size
        self._predict = serve.batch(
            max_batch_size=mbs, batch_wait_timeout_s=settings.max_delay_ms / 1000.0,
            max_concurrent_batches=instances,
            # a request counts its images, up to a whole batch: a bigger one runs alone, in chunks (CloudModel)
            batch_size_fn=lambda xs: sum(min(len(x), mbs) for x in xs),
        )(self._predict_batch)
        log.info("%s: replica ready in %.1f s (pid %d; %s loaded in %.1f s, warm-up %.1f s; %d instance(s) x %d "
                 "thread(s))", name, time.perf_counter() - t0, os.getpid(), backend, t_load,
                 self.model.warmup_seconds, instances, threads)

    async def run(self, job: Job) -> Reply:
        """Decode the job (in the pool, or here if tiny), then batch it with others and run the model."""
        try:
            if job.inline:
                x, ask = job.run(self.spec)
            else:
                x, ask = await asyncio.get_running_loop().run_in_executor(self.decode_pool, job.run, self.spec)
        except Exception as e:  # noqa: BLE001 - bad input becomes its 4xx at the ingress; anything else is a bug
            known = describe(e)
            if known is None:
                raise
            return Reply(refused=known)
        outputs, batch = await self._predict(x)
        return Reply(outputs, ask, batch)

    async def _predict_batch(self, xs: list[np.ndarray]) -> list[tuple[Outputs, BatchInfo | None]]:
        loop = asyncio.get_running_loop()  # the model runs on a worker thread; this loop keeps batching
        y, seconds = await loop.run_in_executor(self.model_pool, run_batch, self.model.predict, xs)
        info = BatchInfo(sum(len(x) for x in xs), seconds)
        return [(rows, info if i == 0 else None) for i, rows in enumerate(split_rows(y, [len(x) for x in xs]))]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.model.backend, "warmup_s": self.model.warmup_seconds, "pid": os.getpid()}

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose model is not warm is replaced."""
        if not self.model.ready.is_set():
            raise RuntimeError(f"{self.model.name}: the model is not warmed up")


# --- the ingress -------------------------------------------------------------------------------------


class RayEngine:
    """A served model's engine (``cloud.engine.ModelEngine``) that sends each Job to the model's replicas."""

    def __init__(self, name: str, handle: DeploymentHandle, metrics: Metrics, settings: Settings):
        self.name, self.metrics = name, metrics
        self.handle = handle.options(method_name="run")
        self.describe = handle.options(method_name="describe")
        self.backend = settings.backend or os.environ.get("KERAS_BACKEND", "tensorflow")  # a replica says at warm-up
        self.max_batch_size = settings.max_batch_size
        self._ready = self._running = False
        self._sent = 0  # requests sent to the replicas and not yet answered

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def running(self) -> bool:
        return self._running

    @property
    def depth(self) -> int:
        return self._sent

    async def start(self, pool: Executor) -> None:
        self._running = True

    async def warmup(self) -> None:
        """Ray routes only to replicas that finished their own warm-up; this waits for one to answer."""
        info = await self.describe.remote()
        self.backend = info["backend"]
        self._ready = True

    async def close(self) -> None:
        self._running = False

    async def run(self, job: Job) -> tuple[Outputs, InferAsk | None]:
        if not self._running:
            raise BatcherClosedError(f"{self.name}: the model is shutting down")
        self._sent += 1
        try:
            reply = await self._send(job)
        finally:
            self._sent -= 1
        if reply.refused is not None:
            raise ApiError(*reply.refused)
        if reply.batch is not None:
            self.metrics.observe_batch(self.name, reply.batch.images, reply.batch.seconds)
        return reply.outputs, reply.ask

    async def _send(self, job: Job) -> Reply:
        """The job to a replica; again to another if that one dies with it; a 503 once that keeps failing."""
        for attempt in range(RETRIES + 1):
            try:
                return await self.handle.remote(job)
            except BackPressureError:
                raise QueueFullError(f"{self.name}: every replica's queue is full; retry shortly") from None
            except RayActorError as e:
                log.warning("%s: a replica was lost with a request (%s); %s", self.name, type(e).__name__,
                            "sending it again" if attempt < RETRIES else "giving up")
                if attempt < RETRIES:
                    await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
        raise ApiError(503, f"{self.name}: model replicas were lost with this request {RETRIES + 1} times; "
                            "retry shortly", {"Retry-After": "1"})


class RayEngines:
    """The ingress's ``cloud.engine.EngineFactory``: a RayEngine per model, on that model's deployment."""

    def __init__(self, handles: dict[str, DeploymentHandle], settings: Settings):
        self.handles, self.settings = handles, settings

    def __call__(self, name: str, bundle: Bundle, spec: ModelInput, metrics: Metrics) -> RayEngine:
        return RayEngine(name, self.handles[name], metrics, self.settings)


class HeaderLimit:
    """The plain service's cap on a request's line and headers (``max_header_bytes``; 431 over it) for the
    ingress behind Ray's HTTP proxy, whose uvicorn server is Ray's own, so ``cloud.server.HeaderGuard`` cannot sit
    in it. Counted as the guard counts them: the target, and each header's name and value plus 4 bytes.
    The guard's other half, the deadline for slow headers, stays with Ray's proxy (its own timeouts)."""

    def __init__(self, app: Any, max_header_bytes: int):
        self.app, self.max_header_bytes = app, max_header_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
            size = target + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_header_bytes:
                why = f"request headers are over {self.max_header_bytes} bytes"
                log.warning("refused %s: %s", scope.get("client") or "a client", why)
                await error_response(431, why, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP API: ``cloud.app``'s FastAPI app, its models' engines on the Model deployments."""

    def __init__(self, bundles: dict[str, str], settings: Settings, models: dict[str, DeploymentHandle]):
        log_through_serve(settings)
        self.bundles, self.settings, self.models = bundles, settings, models

    def __serve_build_asgi_app__(self):
        app = create_app(self.bundles, self.settings, engines=RayEngines(self.models, self.settings))
        app.front = HeaderLimit(app.front, self.settings.max_header_bytes)
        return app


# --- building the application ------------------------------------------------------------------------


def build_app(bundles: list[str] | dict[str, str], settings: Settings, scale: ScaleOptions):
    """The Ray Serve application: one Model deployment per bundle (verified here, so errors show at once),
    and the Ingress in front of them."""
    from .app import load_bundles

    paths = {name: str(Path(b.path).resolve()) for name, b in load_bundles(
        {k: Path(v) for k, v in bundles.items()} if isinstance(bundles, dict) else [Path(b) for b in bundles]).items()}
    model_opts = scale.model_deployment(settings)
    models = {name: Model.options(name=f"Model-{name}", **model_opts).bind(
        name, path, settings, scale.cpus_per_replica, scale.gpus_per_replica) for name, path in paths.items()}
    ingress = Ingress.options(num_replicas=scale.ingress_replicas, ray_actor_options={"num_cpus": 0},
                              max_ongoing_requests=INGRESS_MAX_ONGOING, logging_config=logging_config(settings),
                              graceful_shutdown_timeout_s=settings.drain_timeout_s)
    return ingress.bind(paths, settings, models)


def app(args: AppArgs):
    """The application builder that ``serve run cloud.ray_app:app key=value ...`` and ``serve deploy`` call."""
    if not args.bundles:
        raise ValueError("no bundle to serve: give bundles=DIR[,DIR] (or env HV_BUNDLES)")
    scale = ScaleOptions(**args.model_dump(exclude={"bundles", "settings"}))
    return build_app(args.bundles, load_settings(**args.settings), scale)
