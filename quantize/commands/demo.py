"""`hybrid-vision demo`: train, quantize, serve and run the edge SDK on the built-in digits, in one command."""

from __future__ import annotations

from edge_sdk.upload import UPLOADS

HELP = "the whole pipeline on the built-in digits: train, quantize, serve, run the edge SDK; print the results"


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-out", help="report folder (bundles, report.json, plots) [demo-out]")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model [the recipe's; 4 with --quick]")
    p.add_argument("--quick", action="store_true",
                   help="a fast, rougher run (few epochs, fewer calibration images), as the tests use")
    p.add_argument("--bundle", default=None,
                   help="start from this trained digits bundle instead of training the cloud model")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the quantized bundles an earlier run left in --out; only serve and evaluate")
    p.add_argument("--edge-width", type=float, default=0.25, help="width of the little edge CNN (big/little) [0.25]")
    p.add_argument("--upload", choices=UPLOADS, default="auto",
                   help="what the edge SDK sends to the cloud [auto]")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and training [0]")
    p.add_argument("--no-detect", action="store_true", help="skip the detection section")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..demo import DemoConfig, print_summary, run_demo

    epochs = args.epochs if args.epochs is not None else (4 if args.quick else None)
    if epochs is not None and epochs < 1:
        from ..demo import DemoError

        raise DemoError(f"--epochs must be at least 1, not {epochs}")
    cfg = DemoConfig(out=args.out, epochs=epochs, patience=3 if args.quick else None, quick=args.quick,
                     bundle=args.bundle, reuse=args.reuse, edge_width=args.edge_width, upload=args.upload,
                     seed=args.seed, progress=not args.quiet, detect=not args.no_detect)
    print_summary(run_demo(cfg))
    return 0
