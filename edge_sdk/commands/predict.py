"""`hybrid-vision predict`: classify images on this device, falling back to the cloud. Needs only the edge extra."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..scores import OOD_ACTIONS, ROUTING_METRICS
from ..upload import UPLOADS

HELP = "classify images with a bundle's int8 model, asking the cloud for the hard ones"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Args:
    p: the sub-command's parser.
    """
    p.add_argument("bundle", help="bundle directory (after `hybrid-vision quantize`)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, BMP, WebP)")
    p.add_argument("--cloud-url", default=None,
                   help="KServe v2 server to fall back to, e.g. https://vision.example.com")
    p.add_argument("--api-key-env", default="HV_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: HV_API_KEY); "
                        "keys are never taken on the command line")
    p.add_argument("--mode", choices=("auto", "edge_only", "cloud_only"), default="auto")
    p.add_argument("--threshold", type=float, default=None, help="override the bundle's calibrated threshold")
    p.add_argument("--metric", choices=ROUTING_METRICS, default=None,
                   help="override the bundle's metric (needs --threshold)")
    p.add_argument("--out-of-distribution", choices=OOD_ACTIONS, default="cloud",
                   help="a frame unlike the training data: ask the cloud, answer 'unknown', or ignore the flag [cloud]")
    p.add_argument("--deadline-ms", type=float, default=2000.0, help="per-image deadline (default 2000)")
    p.add_argument("--upload", choices=UPLOADS, default="auto", help="what to send to the cloud [auto]")
    p.add_argument("--ca-bundle", default=None, help="CA certificate file to verify the server's TLS certificate")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    """Classify each image, one line each (or one JSON object each with --json).

    Args:
        args: the parsed command line.

    Returns:
        0, or 1 when any image got no answer, 2 for --metric without --threshold.
    """
    from edge_sdk.errors import HybridVisionError, InvalidImageError
    from edge_sdk.hybrid import HybridClassifier

    if args.metric and args.threshold is None:
        print("hybrid-vision predict: --metric needs --threshold", file=sys.stderr)
        return 2
    clf = HybridClassifier.from_bundle(
        args.bundle, cloud_url=args.cloud_url, api_key=os.environ.get(args.api_key_env) or None, mode=args.mode,
        deadline_ms=args.deadline_ms, threshold=args.threshold, metric=args.metric, num_threads=args.threads,
        upload=args.upload, ca_bundle=args.ca_bundle, out_of_distribution=args.out_of_distribution,
    )
    failed = 0
    with clf:
        for path in args.images:
            try:
                p = clf.predict(path)
            except (InvalidImageError, HybridVisionError) as e:
                failed += 1
                if args.json:
                    print(json.dumps({"image": path, "error": str(e), "type": type(e).__name__}), flush=True)
                else:
                    print(f"{path}\terror: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                continue
            if args.json:
                print(json.dumps({"image": path, **p.to_dict()}), flush=True)
            else:
                extra = f"\t({p.cloud_error})" if p.cloud_error else ""
                print(f"{path}\t{p.label}\t{p.confidence:.4f}\t{p.source}\t{p.reason}{extra}", flush=True)
    return 1 if failed else 0
