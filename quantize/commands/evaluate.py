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
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from edge_sdk.scores import LOWER_IS_CONFIDENT

    from ..evaluate import evaluate_bundle, format_routing

    api_key = os.environ.get(args.api_key_env) or None
    out = args.out or f"evaluate-{os.path.basename(os.path.normpath(args.bundle))}"
    ev = evaluate_bundle(
        args.bundle, args.data, cloud_url=args.cloud_url, api_key=api_key, cloud_model=args.cloud_model,
        upload=args.upload, out_dir=out, deadline_ms=args.deadline_ms, progress=not args.quiet,
    )
    r = ev.report
    where = f"cloud at {args.cloud_url}" if args.cloud_url else "cloud model in-process (no network)"
    op = "<=" if r["routing"]["metric"] in LOWER_IS_CONFIDENT else ">="
    print(ev.table(f"{r['name']} on {r['data']['source']}: {r['data']['n']} images, {where}; "
                   f"hybrid = edge answer when {r['routing']['metric']} {op} {r['routing']['threshold']:.4g}"))
    print(format_routing(r["routing"]))
    if r["data"]["skipped"]:
        print(f"skipped {r['data']['skipped']} unreadable image(s), e.g. {r['data']['skipped_files'][0][0]}")
    print(f"report: {r['files']['report']}")
    print(f"plot:   {r['files']['accuracy_vs_offload']}")
    return 0
