"""The int8 detector on the device: one LiteRT interpreter per thread, three dequantized outputs, numpy decoding.

Like :class:`edge_sdk.runtime.LocalModel` (same interpreter back-ends, same
per-thread interpreters built from bytes held in memory), but for a model with
one image input and the three CenterNet outputs (heatmap, size, offset). The
outputs are found through the model's serving signature (``output_0..2`` in
the order the Keras model lists them), not by tensor order, which the
converter does not keep.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .detection import Detections, DetectionSpec, decode
from .errors import ModelLoadError
from .preprocess import QuantParams
from .runtime import BACKENDS, _dequant_table, _quant_of, _read_model, find_interpreter


def _output_indices(interp: Any, n: int, source: str) -> list[int]:
    """Tensor indices of outputs 0..n-1 in the Keras model's order, from the serving signature."""
    try:
        sigs = interp.get_signature_list()
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        details = interp.get_signature_runner(key).get_output_details()
        names = sorted(details, key=lambda s: int(s.rsplit("_", 1)[-1]))
        found = [int(details[k]["index"]) for k in names]
    except (StopIteration, ValueError, KeyError, RuntimeError):
        found = [int(d["index"]) for d in sorted(interp.get_output_details(), key=lambda d: d["name"])]
    if len(found) != n:
        raise ModelLoadError(f"{source}: a detector has {n} outputs (heatmap, size, offset); "
                             f"this model has {len(found)}")
    return found


class DetectorModel:
    """One int8 TFLite CenterNet detector; call it from any number of threads."""

    def __init__(self, model: str | Path | bytes, *, num_threads: int | None = None,
                 backend: str | Sequence[str] | None = None, expected_sha256: str | None = None):
        """Args:
            model: a .tflite path or its bytes.
            num_threads: interpreter threads (None: LiteRT's default).
            backend: the interpreter package(s) to try, in order (None: every known one).
            expected_sha256: refuse a file with another checksum.

        Raises:
            ModelLoadError: unreadable, a checksum mismatch, or not a three-output int8 detector.
        """
        content, self.source = _read_model(model)
        self.sha256 = hashlib.sha256(content).hexdigest()
        if expected_sha256 and expected_sha256 != self.sha256:
            raise ModelLoadError(f"{self.source}: sha256 {self.sha256[:12]}… does not match the expected "
                                 f"{expected_sha256[:12]}…")
        self._content, self.num_threads = content, num_threads
        preferred = (backend,) if isinstance(backend, str) else tuple(backend or BACKENDS)
        self.backend, self._interpreter_cls = find_interpreter(preferred)
        self._local = threading.local()
        interp = self._new_interpreter()
        inp = interp.get_input_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4:
            raise ModelLoadError(f"{self.source}: expected one [1, H, W, C] image input")
        self._out_index = _output_indices(interp, 3, self.source)
        by_index = {int(d["index"]): d for d in interp.get_output_details()}
        outs = [by_index[i] for i in self._out_index]
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in inp[0]["shape"][1:])  # type: ignore[assignment]
        self.num_classes = int(outs[0]["shape"][-1])
        if [int(o["shape"][-1]) for o in outs[1:]] != [2, 2]:
            raise ModelLoadError(f"{self.source}: the size and offset outputs must have 2 channels each")
        self.input_quant: QuantParams = _quant_of(inp[0], "input")
        self.output_quant = [_quant_of(o, f"output {k}") for k, o in enumerate(outs)]
        self._deq = [_dequant_table(q) for q in self.output_quant]
        self._bind(interp)

    @classmethod
    def from_bundle(cls, bundle: Any, *, num_threads: int | None = None,
                    backend: str | Sequence[str] | None = None) -> DetectorModel:
        """The bundle's ``edge`` model (tflite-int8), checked against the manifest's sha256.

        Args:
            bundle: a loaded detect Bundle.
            num_threads: interpreter threads (None: LiteRT's default).
            backend: the interpreter package(s) to try, in order.

        Returns:
            The detector.

        Raises:
            ModelLoadError: no int8 edge model in the bundle, or it does not load.
        """
        m = bundle.manifest.models.get("edge")
        if m is None:
            raise ModelLoadError(f"{bundle.path}: bundle has no edge model; run `hybrid-vision quantize` on it")
        if m.format != "tflite-int8":
            raise ModelLoadError(f"{bundle.path}: edge model format is {m.format}, expected tflite-int8")
        return cls(bundle.path / m.file, num_threads=num_threads, backend=backend, expected_sha256=m.sha256 or None)

    def _new_interpreter(self) -> Any:
        try:
            interp = self._interpreter_cls(model_content=self._content, num_threads=self.num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{self.source}: the {self.backend} interpreter cannot load this model: {e}") from None
        return interp

    def _bind(self, interp: Any) -> tuple[Any, int]:
        slot = (interp, int(interp.get_input_details()[0]["index"]))
        self._local.slot = slot
        return slot

    def _slot(self) -> tuple[Any, int]:
        try:
            return self._local.slot  # type: ignore[no-any-return]
        except AttributeError:
            return self._bind(self._new_interpreter())

    def outputs_quantized(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the interpreter on one input.

        Args:
            xq: one quantized HxWxC input (int8/uint8, as ``input_quant`` says).

        Returns:
            (heatmap [h, w, C], size [h, w, 2], offset [h, w, 2]), dequantized to float32.
        """
        interp, i_in = self._slot()
        interp.set_tensor(i_in, xq.reshape((1,) + self.input_shape))
        interp.invoke()
        heat, size, offset = (t[interp.get_tensor(i)[0].view(np.uint8)] for t, i in zip(self._deq, self._out_index,
                                                                                          strict=True))
        return heat, size, offset

    def detect_quantized(self, xq: np.ndarray, spec: DetectionSpec) -> Detections:
        """Run and decode one input.

        Args:
            xq: one quantized HxWxC input.
            spec: how to decode (stride, peaks kept, lowest score).

        Returns:
            Detections in model-input pixels.
        """
        return decode(*self.outputs_quantized(xq), spec)

    def __repr__(self) -> str:
        return (f"DetectorModel({self.source!r}, backend={self.backend!r}, input={self.input_shape}, "
                f"classes={self.num_classes}, sha256={self.sha256[:12]}…)")
