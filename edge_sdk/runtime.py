"""The int8 edge model on the device: LiteRT first, then tflite-runtime, then (last resort) TensorFlow Lite.

An interpreter is not thread-safe, so each thread that calls a :class:`LocalModel`
gets its own interpreter (``threading.local``), built on first use from the
model bytes held in memory. A LocalModel never changes after it is built: an
over-the-air update builds a new one and the owner swaps the reference, while
threads already inside ``predict`` finish on the old one.

The hot path is ``set_tensor`` / ``invoke`` / ``get_tensor`` on a per-thread
interpreter with its tensor indices looked up once.

A model may have more outputs than the probabilities, named by its signature
(quantize.edge_outputs adds ``logits``, ``features`` and ``stage_k`` for the
routing scores): the one named ``probabilities`` is the classifier's answer,
and :meth:`LocalModel.predict_outputs` returns the others, dequantized, from
the same invoke.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bundle import Bundle
from .errors import ModelLoadError
from .nativelog import native_stderr_silenced
from .preprocess import InputSpec, PreprocessSpec, QuantParams, dequantize, normalize, quantize

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")
_first_interpreter = True


Interpreter = Any  # a TFLite Interpreter of whichever backend (they share the API, not a type)


def _load_backend(name: str) -> Callable[..., Interpreter]:
    """The Interpreter class of one backend; ImportError if it is not installed."""
    cls: Callable[..., Interpreter]
    if name == "ai_edge_litert":
        cls = importlib.import_module("ai_edge_litert.interpreter").Interpreter
        return cls
    if name == "tflite_runtime":
        cls = importlib.import_module("tflite_runtime.interpreter").Interpreter
        return cls
    if name == "tensorflow":
        # Last resort only: a device should never need TensorFlow installed.
        import tensorflow.lite as tfl  # noqa: PLC0415

        cls = tfl.Interpreter
        return cls
    raise ValueError(f"unknown interpreter backend {name!r}; choose from {', '.join(BACKENDS)}")


def find_interpreter(preferred: Sequence[str] = BACKENDS) -> tuple[str, Callable[..., Any]]:
    """Find an installed interpreter.

    Args:
        preferred: backend names to try, in order.

    Returns:
        The first that imports, and its Interpreter class.

    Raises:
        ModelLoadError: none is installed (the message says how to install one).
    """
    errors = []
    for name in preferred:
        try:
            return name, _load_backend(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ModelLoadError(
        "no TFLite interpreter is installed (tried " + "; ".join(errors) + "). pip install 'hybrid-vision[edge]'"
    )


def _quant_of(detail: dict[str, Any], what: str) -> QuantParams:
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    if dtype not in (np.int8, np.uint8) or not scale:
        raise ModelLoadError(
            f"the edge model's {what} is {dtype.name} without quantization; expected a full-integer int8 model"
        )
    return QuantParams(scale=float(scale), zero_point=int(zero), dtype=dtype.name)


def _dequant_table(q: QuantParams) -> np.ndarray:
    """dequantize() of every int8/uint8 value, indexed by the value's bits read as uint8: one look-up per call."""
    values = np.arange(256, dtype=np.uint8).view(np.dtype(q.dtype))
    return dequantize(values, q)


class PixelQuantizer:
    """Resized RGB uint8 -> the edge model's integer input, in one table look-up.

    ``normalize`` and ``quantize`` (edge_sdk.preprocess) act on each channel
    value on its own, after the grey conversion for 1-channel models, so for
    uint8 pixels their composition is a function of (value, channel). The table
    is computed by those very functions, and checked against them on random
    images when built; if it ever disagreed the direct path would be used.
    """

    def __init__(self, inp: InputSpec, pp: PreprocessSpec, quant: QuantParams) -> None:
        """Build the table and check it against the direct path.

        Args:
            inp: the model's input.
            pp: its preprocessing.
            quant: its input quantization.
        """
        self.inp, self.pp, self.quant = inp, pp, quant
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1x256x3, R=G=B=v
        table = quantize(normalize(ramp, inp, pp), quant)[0]  # 256 x C
        per_channel = inp.channels == 3 and not (table == table[:, :1]).all()
        # cv2.LUT's table: 256 entries, one channel (the same for R, G, B) or one per channel
        self._lut = np.ascontiguousarray(table.reshape(256, 1, 3) if per_channel else table[:, 0])
        self._grey = inp.channels == 1
        rng = np.random.default_rng(0)
        probes = [rng.integers(0, 256, (inp.height, inp.width, 3), dtype=np.uint8) for _ in range(3)]
        probes.append(np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2))
        self.exact = all(np.array_equal(self._lookup(p), self.direct(p)) for p in probes)
        if not self.exact:
            log.warning("pixel quantization table disagrees with preprocess; using the direct path")
        # what a call runs, chosen once: the table, or the direct path if the table ever disagreed
        self.quantize_pixels: Callable[[np.ndarray], np.ndarray] = self._lookup if self.exact else self.direct

    def direct(self, rgb: np.ndarray) -> np.ndarray:
        """Args:
            rgb: resized HxWx3 uint8 RGB.

        Returns:
            normalize then quantize (edge_sdk.preprocess): what the table must equal.
        """
        return quantize(normalize(rgb, self.inp, self.pp), self.quant)

    def _lookup(self, rgb: np.ndarray) -> np.ndarray:
        """The table look-up (cv2.LUT: one pass in C, several times faster than numpy's fancy indexing)."""
        if self._grey:
            out: np.ndarray = cv2.LUT(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), self._lut)[..., None]
            return out
        out = cv2.LUT(rgb, self._lut)
        return out

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Args:
            rgb: resized HxWx3 uint8 RGB.

        Returns:
            The model's integer input, HxWxC.
        """
        return self.quantize_pixels(rgb)



def _same_quant(a: QuantParams, b: QuantParams) -> bool:
    close = abs(a.scale - b.scale) <= 1e-6 * max(a.scale, b.scale)
    return a.dtype == b.dtype and a.zero_point == b.zero_point and close


def _read_model(model: str | Path | bytes) -> tuple[bytes, str]:
    """The model's bytes and where they came from (for messages)."""
    if isinstance(model, (str, Path)):
        try:
            return Path(model).read_bytes(), str(model)
        except OSError as e:
            raise ModelLoadError(f"{model}: cannot read the edge model ({e.strerror or e})") from None
    return bytes(model), "<memory>"


def _named_outputs(interp: Interpreter, source: str) -> dict[str, dict[str, Any]]:
    """Output details by name: a single output is ``probabilities``; several are named by the model's signature."""
    outs: list[dict[str, Any]] = interp.get_output_details()
    if len(outs) == 1:
        return {"probabilities": outs[0]}
    try:
        named: dict[str, dict[str, Any]] = interp.get_signature_runner().get_output_details()
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{source}: a model with {len(outs)} outputs needs a signature naming them ({e})") \
            from None
    by_index = {d["index"]: d for d in outs}
    result = {name: by_index[d["index"]] for name, d in named.items() if d["index"] in by_index}
    if "probabilities" not in result:
        raise ModelLoadError(f"{source}: the model's outputs are {sorted(result)}; a classifier needs one named "
                             "'probabilities'")
    return result


Slot = tuple[Interpreter, int, int, tuple[int, ...]]  # interpreter, input, probabilities, the extra outputs


class LocalModel:
    """One int8 TFLite classifier; call it from any number of threads."""

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        num_threads: int | None = None,
        backend: str | Sequence[str] | None = None,
        input_quant: QuantParams | None = None,
        output_quant: QuantParams | None = None,
        expected_sha256: str | None = None,
    ):
        """Load and check the model.

        The quantization read from the model itself is what is used; if the manifest's
        ``input_quant``/``output_quant`` are given they must agree with it (a mismatch means a broken
        bundle, so it is refused rather than silently giving wrong answers).

        Args:
            model: a .tflite file or its bytes.
            num_threads: interpreter threads (None: the backend's default).
            backend: the backend(s) to try, in order (default: :data:`BACKENDS`).
            input_quant: the manifest's input quantization, to check against the model's.
            output_quant: the manifest's output quantization, to check against the model's.
            expected_sha256: the manifest's sha256 of the file.

        Raises:
            ModelLoadError: unreadable, a checksum mismatch, no interpreter, not a 1-in/1-out full-integer
                classifier, or quantization that disagrees with the manifest.
        """
        content, self.source = _read_model(model)
        self.sha256 = hashlib.sha256(content).hexdigest()
        if expected_sha256 and expected_sha256 != self.sha256:
            raise ModelLoadError(
                f"{self.source}: sha256 {self.sha256[:12]}… does not match the expected {expected_sha256[:12]}…"
            )
        self._content = content
        self.num_threads = num_threads
        preferred = (backend,) if isinstance(backend, str) else tuple(backend or BACKENDS)
        self.backend, self._interpreter_cls = find_interpreter(preferred)
        self._local = threading.local()
        interp = self._new_interpreter()  # fails here, not on the first predict, if the model is bad
        self._read_io(interp)
        self._check_quant(input_quant, self.input_quant, "input")
        self._check_quant(output_quant, self.output_quant, "output")
        self._input_dtype = np.dtype(self.input_quant.dtype)
        self._deq = _dequant_table(self.output_quant)
        self._bind(interp)

    def _read_io(self, interp: Any) -> None:
        """Shapes and quantization of the one input and the probabilities; the names and dequantization tables
        of any extra outputs. ModelLoadError if it is not a classifier."""
        inp = interp.get_input_details()
        if len(inp) != 1:
            raise ModelLoadError(f"{self.source}: expected 1 input, got {len(inp)}")
        named = _named_outputs(interp, self.source)
        out = [named["probabilities"]]
        self._extra_names = tuple(sorted(n for n in named if n != "probabilities"))
        self._extra_deq = {n: _dequant_table(_quant_of(named[n], f"{n!r} output")) for n in self._extra_names}
        in_shape, out_shape = tuple(int(d) for d in inp[0]["shape"]), tuple(int(d) for d in out[0]["shape"])
        if len(in_shape) != 4 or in_shape[0] != 1 or len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelLoadError(
                f"{self.source}: expected input [1,H,W,C] and output [1,C], got {in_shape} and {out_shape}"
            )
        self.input_shape: tuple[int, int, int] = (in_shape[1], in_shape[2], in_shape[3])
        self._batch_shape = in_shape
        self.num_classes = out_shape[1]
        self.input_quant = _quant_of(inp[0], "input")
        self.output_quant = _quant_of(out[0], "output")

    def _check_quant(self, given: QuantParams | None, actual: QuantParams, what: str) -> None:
        if given is not None and not _same_quant(given, actual):
            raise ModelLoadError(
                f"{self.source}: manifest {what}_quant {given.model_dump()} does not match "
                f"the model's own {actual.model_dump()}"
            )

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, *, num_threads: int | None = None, backend: str | Sequence[str] | None = None
    ) -> LocalModel:
        """The bundle's ``edge`` model (format tflite-int8), checked against the manifest's sha256 and quantization.

        Args:
            bundle: a loaded bundle.
            num_threads: interpreter threads.
            backend: backend(s) to try.

        Returns:
            The model.

        Raises:
            ModelLoadError: no edge model, another format, or the model fails to load (see ``__init__``).
        """
        m = bundle.manifest.models.get("edge")
        if m is None:
            raise ModelLoadError(f"{bundle.path}: bundle has no edge model; run `hybrid-vision quantize` on it")
        if m.format != "tflite-int8":
            raise ModelLoadError(f"{bundle.path}: edge model format is {m.format}, expected tflite-int8")
        return cls(
            bundle.path / m.file, num_threads=num_threads, backend=backend,
            input_quant=m.input_quant, output_quant=m.output_quant, expected_sha256=m.sha256 or None,
        )

    # --- per-thread interpreters -------------------------------------------------

    def _new_interpreter(self) -> Interpreter:
        global _first_interpreter
        try:
            # LiteRT announces its XNNPACK delegate on the first interpreter of a process
            with native_stderr_silenced() if _first_interpreter else contextlib.nullcontext():
                interp = self._interpreter_cls(model_content=self._content, num_threads=self.num_threads)
                interp.allocate_tensors()
            _first_interpreter = False
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(
                f"{self.source}: the {self.backend} interpreter cannot load this model: {e}"
            ) from None
        return interp

    def _bind(self, interp: Interpreter) -> Slot:
        named = _named_outputs(interp, self.source)
        extras = tuple(int(named[n]["index"]) for n in self._extra_names)
        slot = (interp, int(interp.get_input_details()[0]["index"]), int(named["probabilities"]["index"]), extras)
        self._local.slot = slot
        return slot

    def _slot(self) -> Slot:
        try:
            slot: Slot = self._local.slot
        except AttributeError:
            return self._bind(self._new_interpreter())
        return slot

    # --- inference -----------------------------------------------------------------

    def predict_quantized(self, xq: np.ndarray) -> np.ndarray:
        """Run the model.

        Args:
            xq: one already-quantized HxWxC (or 1xHxWxC) input.

        Returns:
            Probabilities [C], float32.
        """
        interp, i_in, i_out, _ = self._slot()
        interp.set_tensor(i_in, xq.reshape(self._batch_shape))
        interp.invoke()
        probs: np.ndarray = self._deq[interp.get_tensor(i_out)[0].view(np.uint8)]
        return probs

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """Names of the outputs beside ``probabilities`` (e.g. ``features``, ``logits``)."""
        return self._extra_names

    def predict_outputs(self, xq: np.ndarray, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model and read its outputs.

        Args:
            xq: one already-quantized HxWxC (or 1xHxWxC) input.
            names: the outputs beside ``probabilities`` to read (default: all; one the model lacks is skipped).

        Returns:
            The outputs by name, dequantized: ``probabilities`` [C], the others (``logits``, ``features``, ...) [K].
        """
        interp, i_in, i_out, extras = self._slot()
        interp.set_tensor(i_in, xq.reshape(self._batch_shape))
        interp.invoke()
        out = {"probabilities": self._deq[interp.get_tensor(i_out)[0].view(np.uint8)]}
        for name, index in zip(self._extra_names, extras, strict=True):
            if names is None or name in names:
                out[name] = self._extra_deq[name][interp.get_tensor(index).reshape(-1).view(np.uint8)]
        return out

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Args:
            x: float32 HxWxC as edge_sdk.preprocess makes it.

        Returns:
            The model's integer input.
        """
        return quantize(x, self.input_quant)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a float (or already quantized) input.

        Args:
            x: one HxWxC input from edge_sdk.preprocess.

        Returns:
            Probabilities [C].
        """
        if x.dtype == self._input_dtype:
            return self.predict_quantized(x)
        return self.predict_quantized(self.quantize_input(x))

    def predict_batch(self, xs: np.ndarray) -> np.ndarray:
        """Run the model on several inputs, one invoke each.

        Args:
            xs: N inputs (float32 or already quantized).

        Returns:
            Probabilities [N, C].
        """
        out = np.empty((len(xs), self.num_classes), np.float32)
        for i, x in enumerate(xs):
            out[i] = self.predict(x)
        return out

    def check_fits(self, inp: InputSpec, num_classes: int) -> None:
        """Check that this model fits a bundle.

        Args:
            inp: the bundle's input.
            num_classes: how many labels it has.

        Raises:
            ModelLoadError: the input shape or the number of classes differs.
        """
        want = (inp.height, inp.width, inp.channels)
        if self.input_shape != want:
            raise ModelLoadError(f"edge model input {self.input_shape} does not match the bundle's input {want}")
        if self.num_classes != num_classes:
            raise ModelLoadError(f"edge model has {self.num_classes} outputs for {num_classes} labels")

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        """Args:
            q: the model's integer output.

        Returns:
            float32 probabilities.
        """
        return dequantize(q, self.output_quant)

    def bare_interpreter(self) -> Interpreter:
        """For benchmarks that compare against the bare invoke.

        Returns:
            A fresh interpreter of the same model.
        """
        return self._new_interpreter()

    def __repr__(self) -> str:
        return (f"LocalModel({self.source!r}, backend={self.backend!r}, input={self.input_shape}, "
                f"classes={self.num_classes}, sha256={self.sha256[:12]}…)")
