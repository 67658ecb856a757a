"""Run a .tflite model the way the device will: the LiteRT interpreter, default delegates, few threads.

Used by ``quantize`` (accuracy, agreement, latency) and by ``evaluate``. Integer
models get their input quantized and their output dequantized with the model's
own parameters through :mod:`edge_sdk.preprocess`, exactly as the edge SDK does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.preprocess import QuantParams, dequantize, quantize

ModelSource = bytes | bytearray | str | Path


def make_interpreter(model: ModelSource, *, num_threads: int = 1, delegates: bool = True):
    """A LiteRT interpreter; ``delegates=False`` gives the plain op list (no XNNPACK node) for inspection."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if delegates else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    if isinstance(model, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(model), num_threads=num_threads, **kw)
    else:
        it = Interpreter(model_path=str(model), num_threads=num_threads, **kw)
    it.allocate_tensors()
    return it


def _params(detail: dict) -> QuantParams | None:
    dt = np.dtype(detail["dtype"])
    if dt not in (np.int8, np.uint8):
        return None
    scale, zp = detail["quantization"]
    return QuantParams(scale=float(scale), zero_point=int(zp), dtype=dt.name)


def output_detail(it, name: str = "probabilities") -> dict:
    """The details of a model's only output, or of its signature output ``name`` when it has several."""
    outs = it.get_output_details()
    if len(outs) == 1:
        return outs[0]
    named = it.get_signature_runner().get_output_details()
    if name not in named:
        raise ValueError(f"the model has outputs {sorted(named)}, none named {name!r}")
    index = named[name]["index"]
    return next(d for d in outs if d["index"] == index)


def io_quant(model: ModelSource) -> tuple[QuantParams | None, QuantParams | None]:
    """(input, probabilities output) quantization of a model; None for a float tensor."""
    it = make_interpreter(model, delegates=False)
    return _params(it.get_input_details()[0]), _params(output_detail(it))


def run_tflite_named(model: ModelSource, x: np.ndarray, *, num_threads: int = 1, progress: bool = False,
                     desc: str = "tflite") -> dict[str, np.ndarray]:
    """float32 (N, H, W, C) -> every signature output of the model by name, dequantized to float32, one image a call."""
    from tqdm.auto import tqdm

    it = make_interpreter(model, num_threads=num_threads)
    runner = it.get_signature_runner()
    (in_name, in_detail), = runner.get_input_details().items()
    out_details = runner.get_output_details()
    in_q = _params(in_detail)
    outs: dict[str, list[np.ndarray]] = {k: [] for k in out_details}
    for xi in tqdm(np.asarray(x, np.float32), desc=desc, unit="img", disable=not progress, leave=False):
        res = runner(**{in_name: quantize(xi[None], in_q) if in_q is not None else xi[None]})
        for k, d in out_details.items():
            q = _params(d)
            outs[k].append(dequantize(res[k], q) if q is not None else res[k].astype(np.float32))
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in outs.items()}


def run_tflite(
    model: ModelSource,
    x: np.ndarray,
    quant: QuantParams | None = None,
    *,
    num_threads: int = 1,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "tflite",
) -> np.ndarray:
    """float32 (N, H, W, C) batch -> float32 (N, classes) probabilities.

    ``quant`` overrides the model's input quantization (normally read from the
    model); the output is always dequantized with the model's own parameters.
    """
    from tqdm.auto import tqdm

    it = make_interpreter(model, num_threads=num_threads)
    inp, out = it.get_input_details()[0], output_detail(it)
    in_q = quant or _params(inp)
    out_q = _params(out)
    dynamic = int(inp["shape_signature"][0]) == -1
    step = batch_size if dynamic else int(inp["shape"][0])
    x = np.asarray(x, np.float32)
    results = []
    current = tuple(inp["shape"])
    for i in tqdm(range(0, len(x), step), desc=desc, unit="batch", disable=not progress, leave=False):
        xb = x[i : i + step]
        n = len(xb)
        if not dynamic and n < step:  # fixed-batch model: pad the last batch
            xb = np.concatenate([xb, np.zeros((step - n,) + xb.shape[1:], np.float32)])
        if tuple(xb.shape) != current:
            it.resize_tensor_input(inp["index"], list(xb.shape))
            it.allocate_tensors()
            inp, out = it.get_input_details()[0], output_detail(it)
            current = tuple(xb.shape)
        it.set_tensor(inp["index"], quantize(xb, in_q) if in_q is not None else xb)
        it.invoke()
        y = it.get_tensor(out["index"])[:n]
        results.append(dequantize(y, out_q) if out_q is not None else y.astype(np.float32))
    if not results:
        return np.zeros((0, int(out["shape"][-1])), np.float32)
    return np.concatenate(results)


@dataclass
class Latency:
    """Per-image latency in milliseconds, batch 1."""

    median_ms: float
    p90_ms: float
    runs: int
    num_threads: int

    def as_dict(self) -> dict:
        return {"median_ms": round(self.median_ms, 4), "p90_ms": round(self.p90_ms, 4),
                "runs": self.runs, "num_threads": self.num_threads}


def measure_latency(model: ModelSource, samples: np.ndarray, **kw) -> Latency:
    """Median per-image latency of one model; see :func:`compare_latency`."""
    return compare_latency({"model": model}, samples, **kw)["model"]


def _bench_interpreter(model: ModelSource, xs: np.ndarray, num_threads: int, runs: int):
    """An interpreter at batch 1 plus its pre-quantized inputs (quantizing is preprocessing, not inference)."""
    it = make_interpreter(model, num_threads=num_threads)
    inp = it.get_input_details()[0]
    if int(inp["shape"][0]) != 1:
        it.resize_tensor_input(inp["index"], [1] + list(inp["shape"][1:]))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
    in_q = _params(inp)
    feed = [quantize(x[None], in_q) if in_q is not None else x[None] for x in xs[: max(1, min(len(xs), runs))]]
    return it, inp["index"], it.get_output_details()[0]["index"], feed


def compare_latency(
    models: Mapping[str, ModelSource],
    samples: np.ndarray,
    *,
    num_threads: int = 1,
    warmup: int = 5,
    runs: int = 100,
    rounds: int = 5,
    max_seconds: float = 10.0,
    progress: bool = False,
    desc: str = "latency",
) -> dict[str, Latency]:
    """Median time of set_tensor + invoke + get_tensor for one image, per model.

    The models take turns in ``rounds`` blocks, so a noisy neighbour on a shared
    machine slows all of them alike instead of whichever ran last. Stops early
    once ``max_seconds`` per model are spent (with at least 5 timed runs each).
    """
    from tqdm.auto import tqdm

    xs = np.asarray(samples, np.float32)
    if len(xs) == 0:
        raise ValueError("latency needs at least one sample")
    benches = {name: _bench_interpreter(m, xs, num_threads, runs) for name, m in models.items()}
    for it, i_in, _, feed in benches.values():
        for k in range(warmup):
            it.set_tensor(i_in, feed[k % len(feed)])
            it.invoke()
    times: dict[str, list[float]] = {name: [] for name in models}
    rounds = max(1, min(rounds, runs))
    per_round = -(-runs // rounds)
    t_end = time.perf_counter() + max_seconds * len(models)
    with tqdm(total=runs * len(models), desc=desc, unit="run", disable=not progress, leave=False) as bar:
        for _ in range(rounds):
            for name, (it, i_in, i_out, feed) in benches.items():
                ts = times[name]
                for _ in range(min(per_round, runs - len(ts))):
                    t0 = time.perf_counter()
                    it.set_tensor(i_in, feed[len(ts) % len(feed)])
                    it.invoke()
                    it.get_tensor(i_out)
                    ts.append((time.perf_counter() - t0) * 1000.0)
                    bar.update(1)
            if min(len(t) for t in times.values()) >= 5 and time.perf_counter() > t_end:
                break
    out = {}
    for name, ts in times.items():
        ts.sort()
        p90 = ts[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
        out[name] = Latency(statistics.median(ts), p90, len(ts), num_threads)
    return out
