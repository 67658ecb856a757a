"""Typed failures of `quantize`: each one names what was wrong; the CLI exits non-zero on any."""

from __future__ import annotations

from typing import Any

from edge_sdk.errors import HybridVisionError


class QuantizeError(HybridVisionError):
    """Quantization did not produce a bundle; the bundle on disk is untouched."""


class ConversionError(QuantizeError):
    """The model cannot be converted to TFLite as asked (shape, op set or quantizer)."""


class CalibrationDataError(QuantizeError):
    """The calibration images cannot be used: missing, empty, one class, unreadable."""


class FloatOpsError(QuantizeError):
    """The converted model still computes some operators in float; ``ops`` lists them."""

    def __init__(self, message: str, ops: list | None = None):
        super().__init__(message)
        self.ops = ops or []


class AccuracyDropError(QuantizeError):
    """int8 accuracy fell more than --max-drop below the float model; ``report`` has the numbers."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report or {}


class EvaluateError(HybridVisionError):
    """The evaluation cannot run: no int8 model, labels that do not match, or a cloud that fails."""
