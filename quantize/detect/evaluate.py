"""`evaluate` for a detect bundle: edge-only, cloud-only and hybrid mAP on labelled images, a table, plots.

Every number is measured with pycocotools in the original images' pixels. The
edge row runs the device path per frame (decode, resize, int8 LiteRT, numpy
decoding; ``edge_sdk.detector_runtime``) and times it. The cloud row runs the
bundle's Keras detector in this process, batched. The hybrid row applies the
bundle's routing (metric and threshold calibrated on validation frames) to
each frame: the edge boxes when the frame's uncertainty is at or below the
threshold, else the cloud's; its time is the edge's plus, for offloaded frames,
the cloud's. The mAP-versus-offload curves sweep every routing score over the
evaluated frames, the bundle's threshold starred.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.detection import Detections, frame_uncertainty, to_original
from edge_sdk.errors import HybridVisionError

from . import cocoeval, datasets
from .annotations import DetectionSet, read_folder

PLOT = "map_vs_offload.png"
PICTURE = "detections.png"


class DetectEvaluateError(HybridVisionError):
    """The detection evaluation cannot run: no int8 model, classes that do not match, unreadable data."""


def resolve_data(bundle: Bundle, data: str, skip_bad: bool = False) -> tuple[DetectionSet, str]:
    """The bundle's own test split (``data`` is the source it was trained on) or a whole COCO/YOLO folder."""
    info = bundle.manifest.data
    folders = data not in datasets.BUILTIN and info is not None and info.source not in datasets.BUILTIN
    if info is not None and (data == info.source or (folders and Path(data).resolve() == Path(info.source).resolve())):
        return datasets.split_from_info(info, max_train=0).test, "test"
    if data in datasets.BUILTIN:
        raise DetectEvaluateError(f"{bundle.path} was not trained on the built-in {data!r}; pass a COCO/YOLO folder")
    ds = read_folder(data, skip_bad=skip_bad)
    unknown = [c for c in ds.labels if c not in bundle.labels]
    if unknown:
        raise DetectEvaluateError(f"{data}: classes {unknown[:10]} are not labels of the bundle ({bundle.labels[:20]})")
    remap = np.array([bundle.labels.index(c) for c in ds.labels], np.int64)
    for r in ds.records:
        r.classes = remap[r.classes] if len(r.classes) else r.classes
    return DetectionSet(list(bundle.labels), ds.records, ds.source, ds.bad), "folder"


@dataclass
class Run:
    dets: list[Detections]  # original-image pixels
    ms: np.ndarray  # per frame


def edge_pass(bundle: Bundle, ds: DetectionSet, progress: bool) -> Run:
    """The device path per frame, timed: load_image, resize, pixel table, int8 invoke, decode, map to pixels."""
    from tqdm.auto import tqdm

    from edge_sdk.detector_runtime import DetectorModel
    from edge_sdk.preprocess import load_image, resize
    from edge_sdk.runtime import PixelQuantizer

    man = bundle.manifest
    model = DetectorModel.from_bundle(bundle, num_threads=1)
    pixels = PixelQuantizer(man.input, man.preprocess, model.input_quant)
    hw = (man.input.height, man.input.width)
    dets, ms = [], []
    for r in tqdm(ds.records, desc="edge int8", unit="img", disable=not progress, leave=False):
        src = r.pixels if r.pixels is not None else r.path
        t0 = time.perf_counter()
        rgb = load_image(src, color="rgb")
        d = model.detect_quantized(pixels(resize(rgb, *hw, man.preprocess.resize)), man.detection)  # type: ignore[arg-type]
        dets.append(Detections(to_original(d.boxes, man.preprocess.resize, hw, rgb.shape[:2]), d.scores, d.classes))
        ms.append((time.perf_counter() - t0) * 1000)
    return Run(dets, np.asarray(ms))


def cloud_pass(bundle: Bundle, ds: DetectionSet, progress: bool) -> Run:
    """The bundle's Keras detector in this process, in batches; time per frame = its batch's time / batch size."""
    from ..models import load_safe
    from .train import detect_batch, in_original, prepare

    man = bundle.manifest
    model = load_safe(bundle.model_path("cloud"), DetectEvaluateError, "the cloud detector")
    prep = prepare(ds, man.input, man.preprocess, progress)
    detect_batch(model, prep.images[:1], man.input, man.preprocess, man.detection)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    dets = detect_batch(model, prep.images, man.input, man.preprocess, man.detection)  # type: ignore[arg-type]
    per = (time.perf_counter() - t0) * 1000 / max(1, len(dets))
    return Run(in_original(dets, ds, man.input, man.preprocess), np.full(len(dets), per))


def sdk_pass(bundle: Bundle, ds: DetectionSet, mode: str, cloud_url: str, api_key: str | None,
             progress: bool) -> tuple[Run, np.ndarray]:
    """HybridDetector.predict per frame against a running server: (the run, which frames the cloud answered)."""
    from tqdm.auto import tqdm

    from edge_sdk.hybrid_detector import HybridDetector

    dets, ms, cloud = [], [], []
    with HybridDetector.from_bundle(bundle, cloud_url=cloud_url, api_key=api_key, mode=mode, probes=[],
                                    min_score=0.0, deadline_ms=10_000.0) as det:
        for r in tqdm(ds.records, desc=f"sdk {mode}", unit="img", disable=not progress, leave=False):
            res = det.predict(r.pixels if r.pixels is not None else r.path, color="rgb")
            d = res.detections
            dets.append(Detections(np.array([x.box for x in d], np.float32).reshape(-1, 4),
                                   np.array([x.score for x in d], np.float32), np.array([x.class_id for x in d],
                                                                                       np.int64)))
            ms.append(res.latency_ms["total"])
            cloud.append(res.source == "cloud")
    return Run(dets, np.asarray(ms)), np.asarray(cloud, bool)


@dataclass
class Row:
    name: str
    n: int
    map50: float
    map: float
    offload: float
    latency_mean_ms: float
    latency_p95_ms: float
    per_class_ap50: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(rows: list[Row], title: str = "") -> str:
    head = ("mode", "mAP@0.5", "mAP@[.5:.95]", "offload", "mean ms", "p95 ms")
    body = [(r.name, f"{r.map50:.4f}", f"{r.map:.4f}", f"{100 * r.offload:.1f}%", f"{r.latency_mean_ms:.2f}",
             f"{r.latency_p95_ms:.2f}") for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join(([title] if title else []) + [line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def draw_examples(ds: DetectionSet, edge: Run, cloud: Run, use_cloud: np.ndarray, labels: list[str], path: Path,
                  n: int = 6, min_score: float = 0.3) -> Path:
    """A grid: each frame with the hybrid's boxes (edge or cloud, as routed) above the score shown."""
    import cv2

    from edge_sdk.drawing import draw_boxes
    from edge_sdk.preprocess import encode_png

    order = list(np.flatnonzero(use_cloud)[: n // 2]) + list(np.flatnonzero(~use_cloud)[: n - min(n // 2,
                                                                                                 int(use_cloud.sum()))])
    tiles = []
    for i in sorted(order)[:n]:
        d = (cloud if use_cloud[i] else edge).dets[i].above(min_score)
        img = draw_boxes(ds.records[i].load(), d.boxes, d.classes, labels, d.scores)
        img = cv2.resize(img, (320, round(320 * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_NEAREST)
        cv2.putText(img, "cloud" if use_cloud[i] else "edge", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255),
                    1, cv2.LINE_AA)
        tiles.append(img)
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    rows = [np.hstack(tiles[k: k + 3] + [np.zeros_like(tiles[0])] * (3 - len(tiles[k: k + 3])))
            for k in range(0, len(tiles), 3)]
    path.write_bytes(encode_png(np.vstack(rows)))
    return path


def _runs(bundle: Bundle, ds: DetectionSet, cloud_url: str | None, api_key: str | None,
          progress: bool) -> tuple[Run, Run, Run, np.ndarray]:
    """(edge, cloud, hybrid runs, which frames the hybrid offloaded): through the SDK against ``cloud_url``, else
    in-process with the bundle's routing applied to the edge's frame scores."""
    edge = edge_pass(bundle, ds, progress)
    if cloud_url:
        cloud, _ = sdk_pass(bundle, ds, "cloud_only", cloud_url, api_key, progress)
        hybrid, use_cloud = sdk_pass(bundle, ds, "auto", cloud_url, api_key, progress)
        return edge, cloud, hybrid, use_cloud
    cloud = cloud_pass(bundle, ds, progress)
    r = bundle.manifest.routing
    use_cloud = np.array([frame_uncertainty(d.scores, r.metric) > r.threshold for d in edge.dets], bool)
    hybrid = Run([cloud.dets[i] if c else edge.dets[i] for i, c in enumerate(use_cloud)],
                 edge.ms + np.where(use_cloud, cloud.ms, 0.0))
    return edge, cloud, hybrid, use_cloud


def _write_files(report: dict[str, Any], out: Path, bundle: Bundle, ds: DetectionSet, split: str,
                 runs: tuple[Run, Run, np.ndarray], matched: tuple[cocoeval.Matched, cocoeval.Matched]) -> None:
    """The mAP-vs-offload plot (with the curves in the report) and the picture of detections."""
    from ..calibrate import plot_curves
    from .calibrate import calibrate

    edge, cloud, use_cloud = runs
    out.mkdir(parents=True, exist_ok=True)
    cal = calibrate(edge.dets, *matched, target_gap=0.5)
    cal.chosen = cal.per_metric.get(bundle.manifest.routing.metric, cal.chosen)
    report["curves"] = cal.as_dict()["curves"]
    title = f"{bundle.manifest.name}: mAP@0.5 vs offload on {split} data (n={len(edge.dets)})"
    report["files"] = {
        "report": str(out / "report.json"),
        "map_vs_offload": str(plot_curves(cal, out / PLOT, title, ylabel="hybrid mAP@0.5 (%)")),  # type: ignore[arg-type]
        "detections": str(draw_examples(ds, edge, cloud, use_cloud, bundle.labels, out / PICTURE,
                                        min_score=bundle.manifest.detection.report_score)),  # type: ignore[union-attr]
    }


def evaluate_detector(bundle_path: str | Path | Bundle, data: str, *, out_dir: str | Path | None = None,
                      progress: bool = True, skip_bad: bool = False, cloud_url: str | None = None,
                      api_key: str | None = None) -> dict[str, Any]:
    """Score edge-only, cloud-only and hybrid; write report.json, the curve plot and a picture to ``out_dir``."""
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    if bundle.manifest.task != "detect" or not bundle.has("edge"):
        raise DetectEvaluateError(f"{bundle.path}: needs a detect bundle with an int8 edge model (run quantize first)")
    t0 = time.perf_counter()
    ds, split = resolve_data(bundle, data, skip_bad)
    edge, cloud, hybrid, use_cloud = _runs(bundle, ds, cloud_url, api_key, progress)
    gt = cocoeval.ground_truth_from(ds.records, bundle.labels)
    rows = []
    for name, run, off in (("edge-only", edge, 0.0), ("cloud-only", cloud, 1.0), ("hybrid", hybrid, use_cloud.mean())):
        s = cocoeval.score(gt, run.dets)
        rows.append(Row(name, len(ds.records), s.map50, s.map, float(off), float(run.ms.mean()),
                        float(np.percentile(run.ms, 95)), s.per_class_ap50))
    r = bundle.manifest.routing
    report: dict[str, Any] = {
        "bundle": str(bundle.path), "name": bundle.manifest.name, "task": "detect", "labels": bundle.labels,
        "data": {"source": ds.source, "split": split, "n": len(ds.records), "boxes": ds.num_boxes,
                 "bad_annotations": len(ds.bad)},
        "routing": {"metric": r.metric, "threshold": r.threshold},
        "cloud": {"where": "http" if cloud_url else "in-process", "url": cloud_url},
        "rows": [row.as_dict() for row in rows],
        "model_bytes": {k: bundle.model_path(k).stat().st_size for k in ("edge", "cloud") if bundle.has(k)},
    }
    if out_dir is not None:
        m_edge = cocoeval.Matched(gt, edge.dets)
        _write_files(report, Path(out_dir), bundle, ds, split, (edge, cloud, use_cloud),
                     (m_edge, cocoeval.Matched(gt, cloud.dets, m_edge.coco_gt)))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
