#!/usr/bin/env python
"""Classify (or, with a detect bundle, detect objects in) a camera or video file frame by frame: the int8 model on
this device, the cloud for hard frames.

    python examples/camera_loop.py bundles/digits --source 0                       # webcam 0, a window
    python examples/camera_loop.py bundles/digits --source clip.mp4 --no-window --out labelled.mp4
    HV_API_KEY=... python examples/camera_loop.py bundles/digits --cloud-url http://127.0.0.1:8000

Each frame gets an overlay: the label, its confidence and where the answer came
from (green: edge, orange: cloud); a detect bundle's frames also get a box and
label per object. Press q or Esc in the window to stop.
Needs only the edge extra: pip install 'hybrid-vision[edge]'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

from edge_sdk import HybridClassifier, HybridDetector, HybridVisionError, load_bundle
from edge_sdk.drawing import draw_boxes

COLORS = {"edge": (60, 200, 60), "cloud": (0, 150, 255)}  # BGR


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory (after `hybrid-vision quantize`)")
    p.add_argument("--source", default="0", help="webcam index (0, 1, ...) or a video file [0]")
    p.add_argument("--cloud-url", default=None, help="cloud server to ask for hard frames (default: edge only)")
    p.add_argument("--api-key-env", default="HV_API_KEY", help="environment variable holding the API key [HV_API_KEY]")
    p.add_argument("--mode", choices=("auto", "edge_only", "cloud_only"), default=None,
                   help="routing mode [auto with --cloud-url, else edge_only]")
    p.add_argument("--deadline-ms", type=float, default=200.0,
                   help="per-frame deadline; a late cloud keeps the edge answer [200]")
    p.add_argument("--out", default=None, help="write the labelled video here (.avi: MJPG, .mp4: mp4v)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--no-window", action="store_true", help="headless: do not open a window")
    p.add_argument("--print", dest="print_frames", action="store_true", help="print one line per frame")
    return p.parse_args(argv)


def open_source(source: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SystemExit(
            f"camera_loop: cannot open video source {source!r} (no such camera or file, or no codec for it)"
        )
    return cap


def open_writer(path: str, frame: np.ndarray, fps: float) -> cv2.VideoWriter:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(path, fourcc, fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"camera_loop: cannot write {path} (use .avi or .mp4)")
    return writer


def overlay(frame: np.ndarray, label: str, confidence: float, source: str, ms: float) -> np.ndarray:
    """Draw a banner with the answer on a copy of the frame."""
    out = frame.copy()
    h, w = out.shape[:2]
    scale = max(0.6, min(w, h) / 400)
    bar = int(28 * scale) + 6
    cv2.rectangle(out, (0, 0), (w, bar), (0, 0, 0), -1)
    text = f"{label} {confidence:.2f} [{source}] {ms:.0f}ms"
    cv2.putText(out, text, (4, bar - 6), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, COLORS.get(source, (255, 255, 255)),
                max(1, int(scale)), cv2.LINE_AA)
    return out


def classify_frame(clf: HybridClassifier, frame, index: int, print_frames: bool):
    """The frame with its answer drawn on it (a "?" when neither side could answer: keep going)."""
    try:
        p = clf.predict(frame)  # OpenCV gives BGR, the SDK's default
    except HybridVisionError as e:
        print(f"frame {index}: no answer: {e}", file=sys.stderr)
        return overlay(frame, "?", 0.0, "none", 0.0)
    if print_frames:
        print(f"frame {index}\t{p.label}\t{p.confidence:.4f}\t{p.source}\t{p.reason}", flush=True)
    return overlay(frame, p.label, p.confidence, p.source, p.latency_ms["total"])


def detect_frame(det: HybridDetector, frame, index: int, print_frames: bool):
    """The frame with each detected object's box and label drawn on it, and a banner saying where they came from."""
    try:
        r = det.predict(frame)
    except HybridVisionError as e:
        print(f"frame {index}: no answer: {e}", file=sys.stderr)
        return overlay(frame, "?", 0.0, "none", 0.0)
    if print_frames:
        found = ", ".join(f"{d.label} {d.score:.2f}" for d in r.detections)
        print(f"frame {index}\t{len(r.detections)} objects\t{r.source}\t{r.reason}\t{found}", flush=True)
    boxed = draw_boxes(frame, np.array([d.box for d in r.detections]), [d.class_id for d in r.detections],
                       det.labels, [d.score for d in r.detections], bgr=True, thickness=2)
    return overlay(boxed, f"{len(r.detections)} objects", 1.0, r.source, r.latency_ms["total"])


def open_model(args, mode: str):
    """HybridDetector for a detect bundle (boxes), HybridClassifier otherwise (a label)."""
    kw = dict(cloud_url=args.cloud_url, api_key=os.environ.get(args.api_key_env), mode=mode,
              deadline_ms=args.deadline_ms)
    if load_bundle(args.bundle).manifest.task == "detect":
        return HybridDetector.from_bundle(args.bundle, **kw), detect_frame
    return HybridClassifier.from_bundle(args.bundle, **kw), classify_frame


def show(frame) -> bool:
    """Show the frame in a window; False once the user pressed q or Esc."""
    try:
        cv2.imshow("hybrid-vision", frame)
    except cv2.error:
        raise SystemExit("camera_loop: this OpenCV has no GUI (headless build); use --no-window") from None
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = args.mode or ("auto" if args.cloud_url else "edge_only")
    clf, answer = open_model(args, mode)
    cap = open_source(args.source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    frames = 0
    t0 = time.perf_counter()
    try:
        while args.max_frames is None or frames < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            shown = answer(clf, frame, frames, args.print_frames)
            frames += 1
            if args.out:
                writer = writer or open_writer(args.out, shown, fps)
                writer.write(shown)
            if not args.no_window and not show(shown):
                break
    except KeyboardInterrupt:
        pass
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if not args.no_window:
            cv2.destroyAllWindows()
        clf.close()
    s = clf.stats()
    secs = time.perf_counter() - t0
    lat = s.latency_ms["total"]
    print(f"processed {frames} frames in {secs:.1f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(s.by_source.items()))
          + (f"; mean {lat.mean:.1f} ms, p95 {lat.p95:.1f} ms per frame" if lat.n else "")
          + (f"; wrote {args.out}" if args.out and writer is not None else ""))
    return 0 if frames else 1


if __name__ == "__main__":
    sys.exit(main())
