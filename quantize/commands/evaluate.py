"""`hybrid-vision evaluate`: the edge / cloud / hybrid table and plots on a labelled folder."""

from __future__ import annotations

import os

from edge_sdk.upload import UPLOADS

HELP = "score edge-only, cloud-only and hybrid on a labelled image folder; print a table, write a report folder"


def add_arguments(p) -> None:
    p.add_argument("bundle", help="bundle directory (after `hybrid-vision quantize`)")
    p.add_argument("--data", required=True,
                   help="image folder (one sub-folder per label), or 'digits': the bundle's own test split "
                        "when it was trained on the built-in digits (likewise for the folder it was trained on)")
    p.add_argument("--cloud-url", default=None,
                   help="a running server (hybrid-vision serve, KServe, Triton); "
                        "default: the bundle's cloud model in-process")
    p.add_argument("--api-key-env", default="HV_API_KEY", metavar="VAR",
                   help="environment variable holding the server's API key [HV_API_KEY]; never on the command line")
    p.add_argument("--cloud-model", default=None,
                   help="the model's name on the server, if not the bundle's name (Triton/KServe model repositories)")
    p.add_argument("--upload", choices=UPLOADS, default="auto",
                   help="what the SDK sends to the cloud [auto]")
    p.add_argument("--deadline-ms", type=float, default=10_000.0, help="per-image deadline for cloud calls [10000]")
    p.add_argument("--out", default=None, help="report folder (default: evaluate-<bundle name>)")
    p.add_argument("--skip-bad", action="store_true",
                   help="detection: leave out images with bad annotations (default: stop, naming file and line)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_detect(args, out: str) -> int:
    from ..detect.evaluate import Row, evaluate_detector, format_table

    r = evaluate_detector(args.bundle, args.data, out_dir=out, progress=not args.quiet, skip_bad=args.skip_bad,
                          cloud_url=args.cloud_url, api_key=os.environ.get(args.api_key_env) or None)
    rows = [Row(**row) for row in r["rows"]]
    ro = r["routing"]
    print(format_table(rows, f"{r['name']} on {r['data']['source']} ({r['data']['split']}): {r['data']['n']} images, "
                             f"{r['data']['boxes']} boxes; cloud {args.cloud_url or 'model in-process'}; "
                             f"hybrid = edge boxes when "
                             f"{ro['metric']} <= {ro['threshold']:.4g}"))
    print("per-class AP@0.5 (edge / cloud / hybrid): " + ", ".join(
        f"{c} {rows[0].per_class_ap50.get(c, float('nan')):.3f}/{rows[1].per_class_ap50.get(c, float('nan')):.3f}/"
        f"{rows[2].per_class_ap50.get(c, float('nan')):.3f}" for c in rows[1].per_class_ap50))
    if r["data"]["bad_annotations"]:
        print(f"skipped {r['data']['bad_annotations']} image(s) with bad annotations")
    for k, v in r["files"].items():
        print(f"{k + ':':16s}{v}")
    return 0


def run(args) -> int:
    from edge_sdk.bundle import load_bundle

    from ..evaluate import evaluate_bundle, format_routing, hybrid_rule

    out = args.out or f"evaluate-{os.path.basename(os.path.normpath(args.bundle))}"
    if load_bundle(args.bundle, verify=False).manifest.task == "detect":
        return run_detect(args, out)
    api_key = os.environ.get(args.api_key_env) or None
    ev = evaluate_bundle(
        args.bundle, args.data, cloud_url=args.cloud_url, api_key=api_key, cloud_model=args.cloud_model,
        upload=args.upload, out_dir=out, deadline_ms=args.deadline_ms, progress=not args.quiet,
    )
    r = ev.report
    where = f"cloud at {args.cloud_url}" if args.cloud_url else "cloud model in-process (no network)"
    rule = hybrid_rule(r["routing"]["metric"], r["routing"]["threshold"])
    print(ev.table(f"{r['name']} on {r['data']['source']}: {r['data']['n']} images, {where}; {rule}"))
    print(format_routing(r["routing"]))
    if r["data"]["skipped"]:
        print(f"skipped {r['data']['skipped']} unreadable image(s), e.g. {r['data']['skipped_files'][0][0]}")
    print(f"report: {r['files']['report']}")
    print(f"plot:   {r['files']['accuracy_vs_offload']}")
    return 0
