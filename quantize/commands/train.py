"""`hybrid-vision train`: a bundle from a folder of labelled images (or the built-in digits)."""

from __future__ import annotations

HELP = ("train a CNN on an image folder (one sub-folder per class) or --data digits, or with --task detect a "
        "detector on COCO JSON / YOLO txt (or --data shapes); write a bundle")


def add_arguments(p) -> None:
    p.add_argument("--task", choices=["classify", "detect"], default="classify",
                   help="classify: what the image shows; detect: where and how big each object is [classify]")
    p.add_argument("--data", default=None, help="image folder, or 'digits' (built in) [digits]; with --task detect: "
                   "a COCO JSON or YOLO txt folder, or 'shapes' (built in) [shapes]")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--arch", default="cnn", choices=["cnn", "mobilenetv2"], help="cloud architecture [cnn]")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier [1.0]")
    p.add_argument("--edge-arch", choices=["cnn", "mobilenetv2"],
                   help="also train a smaller edge network (big/little); default: edge = the same CNN")
    p.add_argument("--edge-width", type=float, default=0.5, help="edge width multiplier [0.5]")
    p.add_argument("--input-size", type=int,
                   help="square input side (default 32 for digits, 96 otherwise; 160 for detection)")
    p.add_argument("--grayscale", action="store_true", default=None, help="one-channel input (default for digits)")
    p.add_argument("--resize", default="stretch", choices=["stretch", "letterbox", "center_crop"])
    p.add_argument("--epochs", type=int, default=None, help="most epochs [40; 30 for detection]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs [8]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--detector", choices=["small", "large"], default="large",
                   help="detection: the cloud detector's size [large]")
    p.add_argument("--edge-detector", choices=["small", "large"],
                   help="detection: also train this detector for the device (big/little); default: the same detector")
    p.add_argument("--init", metavar="KERAS",
                   help="detection: start from this saved detector's weights (e.g. a bundle's cloud.keras) to train on")
    p.add_argument("--flip", action="store_true", help="detection: random horizontal flips (not for text or digits)")
    p.add_argument("--skip-bad", action="store_true",
                   help="detection: leave out images with bad annotations, report and count them (default: stop "
                        "at the first, naming its file and line)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_detect(args) -> int:
    from ..detect.train import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(
        data=args.data or "shapes", out=args.out, name=args.name, model=args.detector, edge_model=args.edge_detector,
        input_size=args.input_size or 160, resize=args.resize, epochs=args.epochs or 30, batch_size=args.batch_size,
        seed=args.seed, augment=not args.no_augment, flip=args.flip, skip_bad=args.skip_bad, progress=not args.quiet,
        init=args.init,
    )
    bundle = train_detector(cfg)
    rep = bundle.manifest.reports["train"]
    print(f"bundle written: {bundle.path} (task detect, {len(bundle.labels)} classes)")
    c = rep["counts"]
    print(f"  images: train {c['train']}, val {c['val']}, test {c['test']}; bad annotations skipped: "
          f"{rep['bad_annotations']['count']}")
    for item in rep["bad_annotations"]["items"][:10]:
        print(f"    {item['file']}{' line ' + str(item['line']) if item['line'] else ''}: {item['reason']}")
    for role in ("cloud", "edge_source"):
        if role in rep:
            r = rep[role]
            print(f"  {role:12s} {r['arch']}: test mAP@0.5 {r['test']['map50']:.4f}, "
                  f"mAP@[.5:.95] {r['test']['map']:.4f}, "
                  f"{r['params']:,} params, {r['epochs_run']} epochs (best {r['best_epoch']}), {r['seconds']:.1f}s")
    print("  next: hybrid-vision quantize", bundle.path)
    return 0


def run(args) -> int:
    from ..train import TrainConfig, train

    if args.task == "detect":
        return run_detect(args)
    cfg = TrainConfig(
        data=args.data or "digits", out=args.out, name=args.name, arch=args.arch, width=args.width,
        edge_arch=args.edge_arch, edge_width=args.edge_width, input_size=args.input_size,
        grayscale=args.grayscale, resize=args.resize, epochs=args.epochs or 40, batch_size=args.batch_size,
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
