"""hybrid-vision edge SDK: int8 on the device, the cloud for the hard images.

Importing this package never imports TensorFlow, Keras, ``cloud`` or ``quantize``.
"""

from .bundle import Bundle, BundleError, Manifest, load_bundle
from .errors import CloudError, CloudUnavailableError, HybridVisionError, InvalidImageError, ModelLoadError
from .hybrid import HybridClassifier, Prediction
from .preprocess import ImageLimits, InputSpec, PreprocessSpec, QuantParams, load_image, preprocess

__all__ = [
    "Bundle", "BundleError", "Manifest", "load_bundle",
    "CloudError", "CloudUnavailableError", "HybridVisionError", "InvalidImageError", "ModelLoadError",
    "ImageLimits", "InputSpec", "PreprocessSpec", "QuantParams", "load_image", "preprocess",
    "HybridClassifier", "Prediction",
]
__version__ = "0.1.0"
