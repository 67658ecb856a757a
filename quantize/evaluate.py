"""`evaluate`: edge-only, cloud-only and hybrid on a labelled folder, as a table, a JSON report and plots.

Every row is measured, never assumed. The edge row always runs the real edge
SDK (``HybridClassifier`` in ``edge_only`` mode, one ``predict`` per image).
With a cloud URL the cloud and hybrid rows also go through the SDK, against
that server. Without one the bundle's Keras model runs in this process
(safe_mode, one compiled call per batch) and the hybrid row applies the SDK's
own routing functions (edge_sdk.policy) to the two sets of answers; its
latency is the edge call plus, for offloaded images, the in-process cloud time
(no network), and its bytes are the request bodies the SDK would have sent.

Capacity probes are off here (``probes=[]``): the numbers describe the models
and the threshold, not how busy this machine happened to be.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.errors import CloudError, HybridVisionError, InvalidImageError
from edge_sdk.policy import confidence, is_confident
from edge_sdk.scores import LOWER_IS_CONFIDENT

from . import data as data_mod

log = logging.getLogger(__name__)

ROWS = ("edge-only", "cloud-only", "hybrid")
PLOT = "accuracy_vs_offload.png"


class EvaluateError(HybridVisionError):
    """The evaluation cannot run: no int8 model, labels that do not match, or a cloud that fails."""


# --- data ------------------------------------------------------------------------------


@dataclass
class EvalData:
    items: list[tuple[Path, int]]
    description: str  # where the images came from, for the report
    split: str  # "test" (the bundle's own test split) or "folder" (every image of the folder)


def resolve_data(bundle: Bundle, data: str) -> EvalData:
    """The labelled images to score, with labels as indices into the bundle's labels.

    ``digits`` (or any folder the bundle was trained on) means the bundle's own
    test split, rebuilt from the manifest; any other folder is used whole, its
    class folder names matched to the bundle's labels (a subset is fine).
    """
    info = bundle.manifest.data
    if info is not None and _same_source(data, info.source):
        try:
            sp = data_mod.split_from_info(info)
        except data_mod.DataError as e:
            raise EvaluateError(f"cannot rebuild the bundle's data split: {e}") from None
        if sp.labels != bundle.labels:
            raise EvaluateError(f"{data}: classes {sp.labels} do not match the bundle's labels {bundle.labels}")
        if not sp.test:
            raise EvaluateError(f"{data}: the bundle's test split is empty")
        return EvalData(list(sp.test), f"{info.source} (the bundle's test split, seed {info.seed})", "test")
    try:
        classes, items = data_mod.list_folder(data_mod.resolve(data))
    except data_mod.DataError as e:
        raise EvaluateError(str(e)) from None
    unknown = [c for c in classes if c not in bundle.labels]
    if unknown:
        raise EvaluateError(
            f"{data}: class folder(s) {', '.join(unknown[:10])} are not labels of the bundle "
            f"(labels: {', '.join(bundle.labels[:20])}{'…' if len(bundle.labels) > 20 else ''})"
        )
    index = {c: bundle.labels.index(c) for c in classes}
    return EvalData([(p, index[classes[y]]) for p, y in items], str(data), "folder")


def _same_source(data: str, source: str) -> bool:
    if data == source:
        return True
    if data in data_mod.BUILTIN or source in data_mod.BUILTIN:
        return False
    try:
        return Path(data).expanduser().resolve() == Path(source).expanduser().resolve()
    except OSError:
        return False


# --- one pass of one mode ------------------------------------------------------------------


@dataclass
class ModeRun:
    """What one mode answered for each image, in item order."""

    name: str
    probs: np.ndarray  # [N, C] the answer's probabilities
    offloaded: np.ndarray  # [N] bool: the answer came from the cloud
    latency_ms: np.ndarray  # [N]
    bytes_sent: np.ndarray  # [N]
    latency_kind: str
    reasons: dict[str, int] = field(default_factory=dict)
    scores: np.ndarray | None = None  # [N] the SDK's routing score of the edge output (edge runs)
    ood: np.ndarray | None = None  # [N] bool: the bundle's out-of-distribution score flagged the image


def sdk_pass(
    bundle: Bundle, paths: Sequence[Path], mode: str, *, cloud_url: str | None = None, api_key: str | None = None,
    cloud_model: str | None = None, upload: str = "auto", deadline_ms: float = 10_000.0, progress: bool = True,
    strict: bool = True,
) -> tuple[ModeRun, list[tuple[str, str]]]:
    """Run the edge SDK's ``predict`` on each image in ``mode``; returns the run and the unreadable files.

    ``strict``: a readable image that gets no answer (the cloud failed in
    cloud_only mode) is an EvaluateError, since the row would be meaningless.
    """
    from tqdm.auto import tqdm

    from edge_sdk.hybrid import HybridClassifier

    clf = HybridClassifier.from_bundle(
        bundle, cloud_url=cloud_url, api_key=api_key, mode=mode, upload=upload, deadline_ms=deadline_ms, probes=[],
        cloud_model=cloud_model,
    )
    n, c = len(paths), len(bundle.labels)
    probs = np.zeros((n, c), np.float32)
    off, lat, sent = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    scores, ood = np.full(n, np.nan), np.zeros(n, bool)
    reasons: Counter = Counter()
    skipped: list[tuple[str, str]] = []
    keep = np.ones(n, bool)
    with clf:
        _warm_up(clf, paths)
        for i, path in enumerate(tqdm(paths, desc=f"sdk {mode}", unit="img", disable=not progress, leave=False)):
            try:
                p = clf.predict(path)
            except InvalidImageError as e:
                skipped.append((str(path), str(e)))
                keep[i] = False
                continue
            except CloudError as e:
                if strict:
                    raise EvaluateError(f"{mode}: no answer for {path}: {e}") from None
                skipped.append((str(path), f"no answer: {e}"))
                keep[i] = False
                continue
            probs[i] = p.probabilities
            off[i] = p.source == "cloud"
            lat[i] = p.latency_ms["total"]
            sent[i] = p.bytes_sent
            scores[i] = np.nan if p.edge_score is None else p.edge_score
            ood[i] = p.out_of_distribution
            reasons[p.reason] += 1
    where = "over HTTP" if cloud_url else "on this machine"
    run = ModeRun(mode, probs[keep], off[keep], lat[keep], sent[keep], f"edge SDK predict() per image, {where}",
                  dict(reasons), scores[keep], ood[keep])
    return run, skipped


def _warm_up(clf, paths: Sequence[Path]) -> None:
    """One untimed call first: the interpreter's first invoke and the first connection are one-off costs."""
    for path in paths[:3]:
        try:
            clf.predict(path)
            return
        except HybridVisionError:
            continue


def keras_cloud_pass(bundle: Bundle, paths: Sequence[Path], *, upload: str = "auto", batch_size: int = 64,
                     progress: bool = True) -> ModeRun:
    """The bundle's full-precision model in this process: shared preprocessing, one compiled call per batch.

    Latency per image = its own preprocessing + its batch's model time / batch size.
    """
    from tqdm.auto import tqdm

    from edge_sdk.preprocess import preprocess

    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    call = compiled_keras(bundle.model_path("cloud"), (inp.height, inp.width, inp.channels))
    n = len(paths)
    xs = np.zeros((n, inp.height, inp.width, inp.channels), np.float32)
    pre_ms = np.zeros(n)
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        xs[i] = preprocess(path, inp, pp)
        pre_ms[i] = (time.perf_counter() - t0) * 1000
    call(xs[:1])  # trace and warm up outside the timing
    probs = np.zeros((n, len(bundle.labels)), np.float32)
    model_ms = np.zeros(n)
    for s in tqdm(range(0, n, batch_size), desc="cloud model (in-process)", unit="batch", disable=not progress, leave=False):
        t0 = time.perf_counter()
        probs[s : s + batch_size] = call(xs[s : s + batch_size])
        model_ms[s : s + batch_size] = (time.perf_counter() - t0) * 1000 / len(xs[s : s + batch_size])
    sent = np.array([request_bytes(p, bundle, upload) for p in paths], float)
    return ModeRun("cloud_only", probs, np.ones(n, bool), pre_ms + model_ms, sent,
                   f"in-process Keras, batches of {batch_size} (no network)", {"cloud_only": n})


def compiled_keras(path: Path, shape: tuple[int, int, int]):
    """Load a .keras file with safe_mode and return ``f(batch) -> probs``, compiled once for any batch size."""
    import keras

    from .models import load_safe

    model = load_safe(path, EvaluateError, "the cloud model")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        return lambda x: fn(tf.constant(x, tf.float32)).numpy()
    return lambda x: np.asarray(model(x, training=False))


def request_bytes(path: Path, bundle: Bundle, upload: str) -> int:
    """The size of the v2 infer request body the SDK sends for this one image (as edge_sdk.client counts it),
    to a server that speaks binary tensor data, as ``hybrid-vision serve`` does."""
    from edge_sdk.preprocess import load_image, resize
    from edge_sdk.upload import Staged, build_request

    inp, pp = bundle.manifest.input, bundle.manifest.preprocess
    rgb = load_image(path)
    staged = Staged(path, rgb, resize(rgb, inp.height, inp.width, pp.resize))
    return len(build_request([staged], upload).encode(binary_data=True).body)


def hybrid_from(edge: ModeRun, cloud: ModeRun, metric: str, threshold: float) -> ModeRun:
    """Route each image with the SDK's own rule: the edge answer when confident (by the SDK's own routing
    score when the edge run recorded it) and not out of distribution, else the cloud's."""
    if edge.scores is not None and not np.isnan(edge.scores).any():
        s = edge.scores
        conf = (s <= threshold) if metric in LOWER_IS_CONFIDENT else (s >= threshold)
    else:
        conf = np.asarray(is_confident(np.asarray(confidence(edge.probs, metric)), threshold, metric), bool)
    if edge.ood is not None:
        conf = conf & ~edge.ood
    probs = np.where(conf[:, None], edge.probs, cloud.probs)
    lat = edge.latency_ms + np.where(conf, 0.0, cloud.latency_ms)
    sent = np.where(conf, 0.0, cloud.bytes_sent)
    reasons = {"confident": int(conf.sum()), "low_confidence": int((~conf).sum())}
    return ModeRun("auto", probs, ~conf, lat, sent, "edge SDK per image + in-process cloud for offloaded images", reasons)


# --- rows, curve and report ------------------------------------------------------------------


@dataclass
class Row:
    name: str
    n: int
    accuracy: float
    macro_f1: float
    offload: float
    latency_mean_ms: float
    latency_p95_ms: float
    latency_kind: str
    bytes_per_image: float
    model_bytes: dict[str, int]
    reasons: dict[str, int]
    confusion_matrix: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_row(name: str, run: ModeRun, y: np.ndarray, labels: list[str], sizes: dict[str, int]) -> Row:
    from .metrics import classification_summary

    s = classification_summary(y, run.probs.argmax(1), labels)
    used = {"edge-only": ("edge",), "cloud-only": ("cloud",), "hybrid": ("edge", "cloud")}[name]
    return Row(
        name=name, n=int(len(y)), accuracy=s["accuracy"], macro_f1=s["macro_f1"], offload=float(run.offloaded.mean()),
        latency_mean_ms=float(run.latency_ms.mean()), latency_p95_ms=float(np.percentile(run.latency_ms, 95)),
        latency_kind=run.latency_kind, bytes_per_image=float(run.bytes_sent.mean()),
        model_bytes={k: sizes[k] for k in used}, reasons=run.reasons, confusion_matrix=s["confusion_matrix"],
    )


@dataclass
class Tradeoff:
    """The accuracy-vs-offload curves on the evaluated data and where the bundle's threshold falls on them."""

    title: str
    curves: dict[str, Any]  # metric -> quantize.calibrate.Curve
    metric: str
    threshold: float
    offload: float
    accuracy: float
    edge_accuracy: float
    cloud_accuracy: float
    measured: tuple[float, float] | None = None  # (offload, accuracy) of the hybrid row, if run separately

    @classmethod
    def from_report(cls, report: dict[str, Any], title: str = "") -> Tradeoff:
        """Rebuild from an evaluate report.json (its "tradeoff", and the hybrid row when it was run over HTTP)."""
        from .calibrate import Curve

        d = report["tradeoff"]
        curves = {m: Curve(m, np.asarray(c["threshold"]), np.asarray(c["offload"]), np.asarray(c["hybrid_accuracy"]))
                  for m, c in d["curves"].items()}
        hybrid = next(r for r in report["rows"] if r["name"] == "hybrid")
        measured = (hybrid["offload"], hybrid["accuracy"]) if report["cloud"]["where"] == "http" else None
        return cls(title, curves, d["metric"], d["threshold"], d["offload_at_threshold"], d["hybrid_accuracy_at_threshold"],
                   d["edge_accuracy"], d["cloud_accuracy"], measured)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "threshold": self.threshold, "offload_at_threshold": self.offload,
            "hybrid_accuracy_at_threshold": self.accuracy, "edge_accuracy": self.edge_accuracy,
            "cloud_accuracy": self.cloud_accuracy, "curves": {m: c.as_dict() for m, c in self.curves.items()},
        }


def tradeoff(edge: ModeRun, cloud: ModeRun, y: np.ndarray, metric: str, threshold: float, title: str = "") -> Tradeoff:
    from .calibrate import METRICS, sweep

    curves = {m: sweep(edge.probs, cloud.probs, y, m) for m in METRICS}
    if metric not in curves and edge.scores is not None:
        curves[metric] = score_curve(edge.scores, metric, edge.probs.argmax(1) == y, cloud.probs.argmax(1) == y)
    h = hybrid_from(edge, cloud, metric, threshold)
    return Tradeoff(
        title, curves, metric, float(threshold), float(h.offloaded.mean()), float((h.probs.argmax(1) == y).mean()),
        float((edge.probs.argmax(1) == y).mean()), float((cloud.probs.argmax(1) == y).mean()),
    )


def score_curve(scores: np.ndarray, metric: str, edge_ok: np.ndarray, cloud_ok: np.ndarray):
    """The curve of a routing score the SDK computed (e.g. ``deferral``), over the thresholds between its values."""
    from .calibrate import Curve, candidate_thresholds

    ts = candidate_thresholds(scores)
    conf = scores[None, :] <= ts[:, None] if metric in LOWER_IS_CONFIDENT else scores[None, :] >= ts[:, None]
    acc = np.where(conf, edge_ok[None, :], cloud_ok[None, :]).mean(axis=1)
    return Curve(metric, ts, 1.0 - conf.mean(axis=1), acc)


def plot_tradeoffs(panels: Sequence[Tradeoff], path: Path) -> Path:
    """One panel per configuration: hybrid accuracy against offload per metric, the bundle's threshold starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], panels):
        for m, c in t.curves.items():
            order = np.argsort(c.offload, kind="stable")
            ax.plot(c.offload[order], 100 * c.accuracy[order], marker=".", ms=3, lw=1.6 if m == t.metric else 0.9,
                    alpha=1.0 if m == t.metric else 0.6, label=m)
        ax.axhline(100 * t.cloud_accuracy, color="grey", ls="--", lw=1, label=f"cloud only {100 * t.cloud_accuracy:.2f}%")
        ax.axhline(100 * t.edge_accuracy, color="grey", ls=":", lw=1, label=f"edge only {100 * t.edge_accuracy:.2f}%")
        ax.plot([t.offload], [100 * t.accuracy], marker="*", ms=16, color="black", ls="none", zorder=5,
                label=f"calibrated threshold: {t.metric} {t.threshold:.4g} -> {100 * t.offload:.1f}% offload, "
                      f"{100 * t.accuracy:.2f}%")
        if t.measured is not None:
            ax.plot([t.measured[0]], [100 * t.measured[1]], marker="x", ms=10, mew=2, color="tab:red", ls="none",
                    zorder=6, label=f"hybrid run (SDK): {100 * t.measured[0]:.1f}% offload, {100 * t.measured[1]:.2f}%")
        ys = [100 * v for c in t.curves.values() for v in c.accuracy] + [100 * t.edge_accuracy, 100 * t.cloud_accuracy]
        pad = max(0.5, 0.08 * (max(ys) - min(ys)))
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0 + pad / 2, max(ys) + pad))
        ax.set_xlabel("offload fraction (share sent to the cloud)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(t.title or "hybrid accuracy vs offload", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def routing_summary(routing: Any, rows: Sequence[Row]) -> dict[str, Any]:
    """The bundle's threshold, what quantize certified on validation data (estimate, bound, n, delta), and the
    gap to the cloud and the offload measured here."""
    cal = routing.calibration or {}
    keys = ("estimate_points", "bound_points", "n", "delta", "target_gap_points", "offload", "too_small", "mode")
    cloud, hybrid = rows[1], rows[2]
    return {"metric": routing.metric, "threshold": routing.threshold, "temperature": routing.temperature,
            "out_of_distribution": routing.ood.kind if routing.ood is not None else None,
            "validation": {k: cal[k] for k in keys if k in cal},
            "gap_points": 100 * (cloud.accuracy - hybrid.accuracy), "offload": hybrid.offload}


def format_routing(r: dict[str, Any]) -> str:
    """One line: the gap measured here beside the validation estimate and its bound."""
    v = r["validation"]
    here = f"here: gap to the cloud {r['gap_points']:.2f} points at {100 * r['offload']:.1f}% offload"
    if "bound_points" not in v:
        return f"routing: {r['metric']} threshold {r['threshold']:.4g}; {here}"
    return (f"routing: {r['metric']} threshold {r['threshold']:.4g}; validation (n={v['n']}): gap estimate "
            f"{v['estimate_points']:.2f} points, bound {v['bound_points']:.2f} at delta {v['delta']:g} "
            f"(target {v['target_gap_points']:g}); {here}")


def model_sizes(bundle: Bundle) -> dict[str, int]:
    return {role: bundle.model_path(role).stat().st_size for role in ("edge", "cloud") if bundle.has(role)}


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KB"


def format_table(rows: Sequence[Row], title: str = "") -> str:
    """A plain-text table, one row per mode: the numbers a README can quote."""
    head = ("mode", "accuracy", "offload", "mean ms", "p95 ms", "bytes/img", "model size")
    names = {"edge": "int8 .tflite", "cloud": ".keras"}
    body = [
        (r.name, f"{100 * r.accuracy:.2f}%", f"{100 * r.offload:.1f}%", f"{r.latency_mean_ms:.2f}", f"{r.latency_p95_ms:.2f}",
         f"{r.bytes_per_image:.0f}", " + ".join(f"{_kb(v)} {names[k]}" for k, v in r.model_bytes.items()))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [title] if title else []
    out += [line(head).rstrip(), "  ".join("-" * w for w in widths), *(line(b).rstrip() for b in body)]
    return "\n".join(out)


@dataclass
class Evaluation:
    """A finished evaluation: the rows, the trade-off, and everything else report.json holds."""

    rows: list[Row]
    tradeoff: Tradeoff
    report: dict[str, Any]

    def table(self, title: str = "") -> str:
        return format_table(self.rows, title)


def evaluate_bundle(
    bundle_path: str | Path | Bundle,
    data: str = "digits",
    *,
    cloud_url: str | None = None,
    api_key: str | None = None,
    cloud_model: str | None = None,
    upload: str = "auto",
    out_dir: str | Path | None = None,
    deadline_ms: float = 10_000.0,
    progress: bool = True,
    title: str | None = None,
    plot: bool = True,
) -> Evaluation:
    """Score edge-only, cloud-only and hybrid on ``data``; write report.json and plots to ``out_dir`` if given."""
    t_start = time.perf_counter()
    try:
        bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    except HybridVisionError as e:
        raise EvaluateError(str(e)) from None
    if not bundle.has("edge"):
        raise EvaluateError(f"{bundle.path}: the bundle has no int8 edge model yet; run `hybrid-vision quantize {bundle.path}` first")
    if not bundle.has("cloud") and cloud_url is None:
        raise EvaluateError(f"{bundle.path}: the bundle has no cloud model to run in-process; pass --cloud-url")
    routing = bundle.manifest.routing
    ed = resolve_data(bundle, data)
    paths = [p for p, _ in ed.items]
    y_all = np.array([y for _, y in ed.items])

    edge, skipped = sdk_pass(bundle, paths, "edge_only", progress=progress)
    bad = {s for s, _ in skipped}
    good = [i for i, p in enumerate(paths) if str(p) not in bad]
    if not good:
        raise EvaluateError(f"{ed.description}: none of the {len(paths)} images could be read (e.g. {skipped[0][1]})")
    paths, y = [paths[i] for i in good], y_all[good]
    if cloud_url:
        kw = dict(cloud_url=cloud_url, api_key=api_key, cloud_model=cloud_model, upload=upload, deadline_ms=deadline_ms,
                  progress=progress)
        cloud, _ = sdk_pass(bundle, paths, "cloud_only", **kw)
        hybrid, _ = sdk_pass(bundle, paths, "auto", strict=False, **kw)
        if len(hybrid.probs) != len(y):
            raise EvaluateError("auto mode lost answers for some images; see the log")
    else:
        cloud = keras_cloud_pass(bundle, paths, upload=upload, progress=progress)
        hybrid = hybrid_from(edge, cloud, routing.metric, routing.threshold)
    sizes = model_sizes(bundle)
    labels = bundle.labels
    rows = [make_row(n, r, y, labels, sizes) for n, r in zip(ROWS, (edge, cloud, hybrid))]
    tr = tradeoff(edge, cloud, y, routing.metric, routing.threshold,
                  title or f"{bundle.manifest.name}: accuracy vs offload on {ed.split} data (n={len(y)})")
    if cloud_url:
        tr.measured = (rows[2].offload, rows[2].accuracy)
    report: dict[str, Any] = {
        "bundle": str(bundle.path), "name": bundle.manifest.name, "labels": labels,
        "data": {"source": ed.description, "split": ed.split, "n": int(len(y)), "skipped": len(skipped),
                 "skipped_files": skipped[:50]},
        "cloud": {"where": "http" if cloud_url else "in-process", "url": cloud_url, "upload": upload,
                  "model": (cloud_model or bundle.manifest.name) if cloud_url else None},
        "routing": routing_summary(routing, rows),
        "capacity_probes": "off",
        "model_bytes": sizes,
        "rows": [r.as_dict() for r in rows],
        "tradeoff": tr.as_dict(),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if out_dir is not None:
        report["files"] = write_outputs(Path(out_dir), rows, tr, labels, report, plot=plot)
    return Evaluation(rows, tr, report)


def write_outputs(out: Path, rows: Sequence[Row], tr: Tradeoff, labels: list[str], report: dict[str, Any],
                  *, plot: bool = True) -> dict[str, Any]:
    """report.json, the accuracy-vs-offload plot and one confusion matrix per row, into ``out``."""
    from .metrics import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"report": str(out / "report.json")}
    if plot:
        files["accuracy_vs_offload"] = str(plot_tradeoffs([tr], out / PLOT))
        files["confusion"] = {
            r.name: str(plot_confusion(r.confusion_matrix, labels, out / f"confusion_{r.name.replace('-', '_')}.png",
                                       f"{r.name}: accuracy {100 * r.accuracy:.2f}% (n={r.n})"))
            for r in rows
        }
    report["files"] = files
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return files
