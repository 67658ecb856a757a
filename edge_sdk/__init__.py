"""hybrid-vision edge SDK: int8 on the device, the cloud for the hard images.

Importing this package never imports TensorFlow, Keras, ``cloud`` or ``quantize``.
"""

from .breaker import BreakerSnapshot, CircuitBreaker
from .bundle import Bundle, Manifest, load_bundle
from .capacity import CpuLoadProbe, InflightProbe, MemoryProbe, Probe, ProbeResult, default_probes
from .errors import (
    BundleError,
    CloudError,
    CloudUnavailableError,
    HybridVisionError,
    InvalidImageError,
    ModelLoadError,
    UpdateError,
)
from .hybrid import HybridClassifier, Prediction
from .hybrid_detector import Detection, DetectionResult, HybridDetector
from .options import (
    CloudOptions,
    CollectConfig,
    CollectOptions,
    DetectorOptions,
    DetectorOverrides,
    EdgeOptions,
    HybridOptions,
    HybridOverrides,
    OfflineQueueConfig,
    RoutingOptions,
)
from .ota import UpdateResult, VerifiedUpdate
from .policy import Metric, Mode, Verdict
from .preprocess import ImageLimits, InputSpec, PreprocessSpec, QuantParams, load_image, preprocess
from .reasons import Reason
from .routing import Observer, Outcome, Router
from .samples import LateAnswer
from .scores import OODAction, RoutingMetric
from .stats import LatencySummary, ModelState, Stats
from .upload import Staged, Upload

__all__ = [
    # the classifier and its answers
    "HybridClassifier", "Prediction", "Reason", "Stats", "LatencySummary", "ModelState",
    # the detector and its answers
    "HybridDetector", "DetectorOptions", "DetectorOverrides", "DetectionResult", "Detection",
    # options
    "HybridOptions", "HybridOverrides", "RoutingOptions", "CloudOptions", "EdgeOptions", "Mode", "Metric", "Upload",
    # learning from the hard images (opt-in collection, the offline queue)
    "CollectOptions", "CollectConfig", "OfflineQueueConfig", "LateAnswer",
    "RoutingMetric", "OODAction",
    # capacity, breaker, updates
    "Probe", "ProbeResult", "default_probes", "MemoryProbe", "CpuLoadProbe", "InflightProbe",
    "CircuitBreaker", "BreakerSnapshot", "UpdateResult", "VerifiedUpdate",
    # the routing path (for other tasks and observers)
    "Router", "Outcome", "Observer", "Verdict", "Staged",
    # bundles and preprocessing
    "Bundle", "BundleError", "Manifest", "load_bundle",
    "ImageLimits", "InputSpec", "PreprocessSpec", "QuantParams", "load_image", "preprocess",
    # errors
    "HybridVisionError", "InvalidImageError", "ModelLoadError", "CloudError", "CloudUnavailableError", "UpdateError",
]
__version__ = "0.1.0"
