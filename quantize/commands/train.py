"""`hybrid-vision train`: a bundle from a folder of labelled images (or the built-in digits)."""

from __future__ import annotations

HELP = "train a CNN on an image folder (one sub-folder per class) or --data digits, and write a bundle"


def add_arguments(p) -> None:
    p.add_argument("--data", default="digits", help="image folder, or 'digits' (built in) [digits]")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--arch", default="cnn", choices=["cnn", "mobilenetv2"], help="cloud architecture [cnn]")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier [1.0]")
    p.add_argument("--edge-arch", choices=["cnn", "mobilenetv2"],
                   help="also train a smaller edge network (big/little); default: edge = the same CNN")
    p.add_argument("--edge-width", type=float, default=0.5, help="edge width multiplier [0.5]")
    p.add_argument("--input-size", type=int, help="square input side (default 32 for digits, 96 otherwise)")
    p.add_argument("--grayscale", action="store_true", default=None, help="one-channel input (default for digits)")
    p.add_argument("--resize", default="stretch", choices=["stretch", "letterbox", "center_crop"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs [8]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, name=args.name, arch=args.arch, width=args.width,
        edge_arch=args.edge_arch, edge_width=args.edge_width, input_size=args.input_size,
        grayscale=args.grayscale, resize=args.resize, epochs=args.epochs, batch_size=args.batch_size,
        patience=args.patience, seed=args.seed, augment=not args.no_augment, progress=not args.quiet,
    )
    bundle = train(cfg)
    rep = bundle.manifest.reports["train"]
    print(f"bundle written: {bundle.path}")
    for role in ("cloud", "edge_source"):
        if role in rep:
            r = rep[role]
            print(f"  {role:12s} {r['arch']} x{r['width']:g}: test accuracy {r['test']['accuracy']:.4f}, "
                  f"macro-F1 {r['test']['macro_f1']:.4f}, {r['params']:,} params, "
                  f"{r['epochs_run']} epochs (best {r['best_epoch']}), {r['seconds']:.1f}s")
    print(f"  total {rep['seconds_total']:.1f}s; skipped files: {rep['skipped']['count']}")
    return 0
