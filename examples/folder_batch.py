#!/usr/bin/env python
"""Classify every image under a folder with predict_batch, and write one CSV row per image.

    python examples/folder_batch.py bundles/digits ./photos --out results.csv
    HV_API_KEY=... python examples/folder_batch.py bundles/digits ./photos --cloud-url http://127.0.0.1:8000

Images go in batches: the edge model runs on each, and the unsure ones of a
batch go to the cloud in one request. An unreadable file gets a row with its
error instead of stopping the run. If the images sit in sub-folders named after
labels (an ImageFolder), the accuracy is printed too.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from edge_sdk import HybridClassifier, HybridVisionError, InvalidImageError

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
FIELDS = ["path", "label", "confidence", "source", "reason", "latency_ms", "error"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory (after `hybrid-vision quantize`)")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", default="results.csv", help="CSV file to write [results.csv]")
    p.add_argument("--cloud-url", default=None, help="cloud server for the unsure images (default: edge only)")
    p.add_argument("--api-key-env", default="HV_API_KEY", help="environment variable holding the API key [HV_API_KEY]")
    p.add_argument("--batch-size", type=int, default=32, help="images per predict_batch call [32]")
    p.add_argument("--deadline-ms", type=float, default=10_000.0, help="deadline per batch [10000]")
    return p.parse_args(argv)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTS)


def classify(clf: HybridClassifier, paths: list[Path], deadline_ms: float) -> list[dict]:
    """One predict_batch for the batch; if an image in it is bad, each image alone, so only that one fails."""
    try:
        preds = clf.predict_batch(paths, deadline_ms=deadline_ms)
        return [row(p, pr) for p, pr in zip(paths, preds, strict=False)]
    except InvalidImageError:
        rows = []
        for p in paths:
            try:
                rows.append(row(p, clf.predict(p, deadline_ms=deadline_ms)))
            except HybridVisionError as e:
                rows.append({"path": str(p), "error": f"{type(e).__name__}: {e}"})
        return rows


def row(path: Path, p) -> dict:
    return {"path": str(path), "label": p.label, "confidence": f"{p.confidence:.6f}", "source": p.source,
            "reason": p.reason, "latency_ms": f"{p.latency_ms['total']:.3f}", "error": p.cloud_error or ""}


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"folder_batch: {folder}: no such folder", file=sys.stderr)
        return 2
    paths = list_images(folder)
    if not paths:
        print(f"folder_batch: {folder}: no images ({', '.join(sorted(EXTS))})", file=sys.stderr)
        return 2
    mode = "auto" if args.cloud_url else "edge_only"
    clf = HybridClassifier.from_bundle(args.bundle, cloud_url=args.cloud_url, api_key=os.environ.get(args.api_key_env),
                                       mode=mode)
    rows: list[dict] = []
    with clf:
        for i in range(0, len(paths), args.batch_size):
            rows += classify(clf, paths[i : i + args.batch_size], args.deadline_ms)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    ok = [r for r in rows if r.get("label")]
    by_source = {s: sum(r["source"] == s for r in ok) for s in ("edge", "cloud")}
    print(f"classified {len(ok)} of {len(rows)} images (edge {by_source['edge']}, cloud {by_source['cloud']}); "
          f"wrote {args.out}")
    labelled = [r for r in ok if Path(r["path"]).parent.name in clf.labels]
    if labelled:
        acc = sum(Path(r["path"]).parent.name == r["label"] for r in labelled) / len(labelled)
        print(f"accuracy against the folder names: {100 * acc:.2f}% ({len(labelled)} images)")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
