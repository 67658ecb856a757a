"""What runs a served model behind the endpoints: an engine, local or on Ray Serve, one code path either way.

The endpoints (``cloud.image_endpoints``) hand an engine a :class:`cloud.inputs.Job`: a request's body as
it arrived. The engine turns it into the model's tensor with ``Job.run`` (the shared decoding,
``edge_sdk.preprocess``), batches it with other requests' tensors, runs ``cloud.model.CloudModel`` on the
batch, and answers that request's rows of the outputs and what the job parsed (an infer request's id and
the outputs it asked for).

* :class:`LocalEngine` does all of this in this process: the decode pool, then ``cloud.batching.Batcher``
  and its model worker threads (``hybrid-vision serve``).
* ``cloud.ray_app.RayEngine`` sends the Job to a Ray Serve model replica, which runs the same ``Job.run``
  and ``CloudModel`` under ``@serve.batch`` (``hybrid-vision serve --engine ray``).

So auth, limits, errors, metrics and the answers' encoding live once, in the app, whichever engine runs
the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from edge_sdk.bundle import Bundle

from .batching import Batcher, Outputs
from .detect_model import DetectCloudModel
from .inputs import InferAsk, Job, ModelInput
from .metrics import Metrics
from .model import CloudModel, configure_threads, plan_instances, select_backend
from .settings import Settings


class ModelEngine(Protocol):
    """One served model's engine, as the app sees it."""

    backend: str  # the Keras backend the model runs on (the metadata's platform says keras_<backend>)
    max_batch_size: int

    @property
    def ready(self) -> bool:
        """Warmed up and able to answer."""

    @property
    def running(self) -> bool:
        """Started and not closing."""

    @property
    def depth(self) -> int:
        """Requests waiting for the model (the hv_queue_depth gauge)."""

    async def start(self, pool: Executor) -> None:
        """Called once the event loop runs; ``pool`` is the app's decode thread pool."""

    async def warmup(self) -> None:
        """Returns once the model answers; the app says ready only after every engine's warm-up."""

    async def close(self) -> None:
        """Refuse new work and finish what was admitted."""

    async def run(self, job: Job) -> tuple[Outputs, InferAsk | None]:
        """The model's rows for this request's images, and what its body asked for (infer requests)."""


EngineFactory = Callable[[str, Bundle, ModelInput, Metrics], ModelEngine]
"""(model name, its verified bundle, how its requests become tensors, the app's metrics) -> its engine."""


def load_cloud_model(bundle: Bundle, name: str, settings: Settings) -> CloudModel:
    """The bundle's cloud model, as every engine loads it (here, and in each Ray replica): a detect bundle's
    gives packed detections (``cloud.detect_model``), a classifier's probabilities."""
    cls = DetectCloudModel if bundle.manifest.task == "detect" else CloudModel
    return cls(bundle, name=name, max_batch_size=settings.max_batch_size, backend=settings.backend)


class LocalEngine:
    """The model in this process: decoding in the app's pool, then the dynamic batcher's worker threads."""

    def __init__(self, model: CloudModel, batcher: Batcher, spec: ModelInput):
        self.model, self.batcher, self.spec = model, batcher, spec
        self.backend = model.backend
        self.max_batch_size = batcher.max_batch_size
        self._pool: Executor | None = None

    @property
    def ready(self) -> bool:
        return self.model.ready.is_set()

    @property
    def running(self) -> bool:
        return self.batcher.running

    @property
    def depth(self) -> int:
        return self.batcher.depth

    async def start(self, pool: Executor) -> None:
        self._pool = pool
        await self.batcher.start()

    async def warmup(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.model.warmup)

    async def close(self) -> None:
        await self.batcher.close()

    async def run(self, job: Job) -> tuple[Outputs, InferAsk | None]:
        ask: InferAsk | None = None

        async def prepare():
            nonlocal ask
            if job.inline:
                x, ask = job.run(self.spec)
            else:
                x, ask = await asyncio.get_running_loop().run_in_executor(self._pool, job.run, self.spec)
            return x

        outputs = await self.batcher.infer(prepare)  # admits (or refuses) before decoding, then batches
        return outputs, ask


class LocalEngines:
    """The default :data:`EngineFactory`: each model loaded here, with its own batcher.

    Chooses the Keras backend and the threading plan (``cloud.model.plan_instances``) once, before any
    model loads (TensorFlow fixes its threads once its runtime starts).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.backend = select_backend(settings.backend)
        self.instances, threads = plan_instances(self.backend, settings.model_instances, settings.model_threads)
        configure_threads(self.backend, threads)

    def __call__(self, name: str, bundle: Bundle, spec: ModelInput, metrics: Metrics) -> LocalEngine:
        s = self.settings
        model = load_cloud_model(bundle, name, s)
        batcher = Batcher(
            model.predict, max_batch_size=s.max_batch_size, max_delay_ms=s.max_delay_ms, queue_size=s.queue_size,
            instances=self.instances, name=name, on_batch=lambda n, sec: metrics.observe_batch(name, n, sec),
        )
        return LocalEngine(model, batcher, spec)
