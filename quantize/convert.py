"""Keras -> TFLite: the fp32 reference and the full-integer int8 edge model.

Quantization happens in exactly one place, :func:`convert_int8`. Today it uses
TensorFlow's ``TFLiteConverter``; LiteRT marks quantization inside the
converter as deprecated in favour of ai-edge-quantizer, which this module can
use instead (``quantizer="ai-edge-quantizer"``) when that package is installed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import ConversionError

QUANTIZERS = ("tflite-converter", "ai-edge-quantizer")
Quantizer = Literal["tflite-converter", "ai-edge-quantizer"]


def input_shape(model) -> tuple[int, int, int]:
    """(H, W, C) of a model that takes one NHWC image batch of fixed size."""
    if len(model.inputs) != 1:
        raise ConversionError(f"model {model.name!r} has {len(model.inputs)} inputs; "
                              "the edge model takes one image tensor")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ConversionError(f"model input shape {shape} is not (batch, height, width, channels) with fixed sizes")
    return int(shape[1]), int(shape[2]), int(shape[3])


def check_classifier(model, num_classes: int | None = None) -> tuple[int, int, int]:
    """The model must map one NHWC image batch to one (N, classes) output; returns (H, W, C)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(
            f"model {model.name!r} has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
            "the edge model must take one image tensor and return one probability vector"
        )
    hwc = input_shape(model)
    out = tuple(model.outputs[0].shape)
    if len(out) != 2 or (num_classes is not None and out[-1] != num_classes):
        raise ConversionError(f"model output shape {out} does not match the bundle's {num_classes} labels")
    return hwc


def _saved_model(model, dest: Path) -> Path:
    """Export the Keras 3 model as a SavedModel with a dynamic batch dimension (outputs named as a dict's keys)."""
    import keras

    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # "Assets written to ..." on every export
    h, w, c = input_shape(model)
    sig = [keras.InputSpec(shape=(None, h, w, c), dtype="float32")]
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the endpoint summary
        model.export(str(dest), format="tf_saved_model", verbose=False, input_signature=sig)
    return dest


def convert_fp32(model) -> bytes:
    """Plain float32 TFLite: the reference the int8 model is measured against."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as td:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(_saved_model(model, Path(td) / "sm")))
        return bytes(conv.convert())


def convert_int8(
    model,
    representative: np.ndarray,
    io_dtype: Literal["int8", "uint8"] = "int8",
    *,
    quantizer: Quantizer = "tflite-converter",
    progress: bool = False,
) -> bytes:
    """Full-integer int8 TFLite (per-channel weights, int8 activations) with int8 or uint8 I/O.

    ``representative`` is an (N, H, W, C) float32 batch already through the shared
    preprocessing. Ops with no int8 kernel are left in float (between QUANTIZE and
    DEQUANTIZE) rather than failing here, so the caller can name them; see
    :func:`quantize.ops.non_int8_ops`.
    """
    if io_dtype not in ("int8", "uint8"):
        raise ConversionError(f"io_dtype must be 'int8' or 'uint8', not {io_dtype!r}")
    rep = np.asarray(representative, np.float32)
    if rep.ndim != 4 or len(rep) == 0:
        raise ConversionError(f"representative data must be a non-empty (N, H, W, C) batch, got shape {rep.shape}")
    if quantizer == "tflite-converter":
        return _tflite_converter_int8(model, rep, io_dtype, progress)
    if quantizer == "ai-edge-quantizer":
        return _ai_edge_quantizer_int8(model, rep, io_dtype, progress)
    raise ConversionError(f"unknown quantizer {quantizer!r}; choose from {', '.join(QUANTIZERS)}")


def _samples(rep: np.ndarray, desc: str, progress: bool) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    for x in tqdm(rep, desc=desc, unit="img", disable=not progress, leave=False):
        yield x[None]


def _tflite_converter_int8(model, rep: np.ndarray, io_dtype: str, progress: bool) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as td:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(_saved_model(model, Path(td) / "sm")))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x] for x in _samples(rep, "int8 calibration", progress))
        # INT8 first; plain builtins only as a fallback for ops with no int8 kernel, which we then report.
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.inference_input_type = getattr(tf, io_dtype)
        conv.inference_output_type = getattr(tf, io_dtype)
        try:
            return bytes(conv.convert())
        except Exception as e:  # the converter raises bare Exceptions/ConverterError with MLIR text
            raise ConversionError(f"TFLiteConverter could not make an int8 model: {str(e).strip()[:800]}") from e


def _ai_edge_quantizer_int8(model, rep: np.ndarray, io_dtype: str, progress: bool) -> bytes:
    """ai-edge-quantizer's static int8 recipe over the fp32 TFLite model (it keeps int8 I/O)."""
    try:
        from ai_edge_quantizer import quantizer as aeq
        from ai_edge_quantizer import recipe
    except ImportError as e:
        raise ConversionError("quantizer 'ai-edge-quantizer' needs: pip install ai-edge-quantizer") from e
    if io_dtype != "int8":
        raise ConversionError(
            "ai-edge-quantizer produces int8 input/output only; use the tflite-converter for uint8 I/O"
        )
    from ai_edge_litert.interpreter import Interpreter

    float_model = convert_fp32(model)
    sigs = Interpreter(model_content=float_model).get_signature_list()
    key, sig = next(iter(sigs.items()))
    name = sig["inputs"][0]
    q = aeq.Quantizer(float_model, recipe.static_wi8_ai8())
    calib = {key: [{name: x} for x in _samples(rep, "int8 calibration", progress)]}
    with contextlib.redirect_stdout(io.StringIO()):
        result = q.quantize(q.calibrate(calib, num_threads=1), enable_progress_report=False)
    return bytes(result.quantized_model)
