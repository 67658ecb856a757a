"""`hybrid-vision train`: a bundle from a folder of labelled images (or the built-in digits)."""

from __future__ import annotations

import argparse

HELP = ("train a CNN on an image folder (one sub-folder per class) or --data digits, or with --task detect a "
        "detector on COCO JSON / YOLO txt (or --data shapes); write a bundle")
ARCH_CHOICES = ["resnet", "resnet_edge", "cnn", "mobilenetv2"]


def add_arguments(p) -> None:
    p.add_argument("--task", choices=["classify", "detect"], default="classify",
                   help="classify: what the image shows; detect: where and how big each object is [classify]")
    p.add_argument("--data", default=None,
                   help="image folder (one sub-folder per class, or train/ and test/ folders of those), or 'digits' "
                        "(built in) [digits]; with --task detect: a COCO JSON or YOLO txt folder, or 'shapes' "
                        "(built in) [shapes]")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--arch", choices=[*ARCH_CHOICES, "kmeans"],
                   help="cloud architecture [from the data: resnet for photos, cnn for small grey shapes, kmeans "
                        "(k-means features + logistic regression) for small data]")
    p.add_argument("--width", type=float, help="cloud width multiplier [from the data]")
    p.add_argument("--edge-arch", choices=ARCH_CHOICES,
                   help="train a separate edge network (big/little) [the cloud model if its int8 file fits "
                        "--edge-max-kb, else resnet_edge]")
    p.add_argument("--edge-width", type=float, help="edge width multiplier [the widest that fits --edge-max-kb]")
    p.add_argument("--edge-max-kb", type=float, default=256.0, help="size budget of the int8 edge file in KB [256]")
    p.add_argument("--no-distill", action="store_true", help="train the edge model on the labels only")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature [4]")
    p.add_argument("--input-size", type=int,
                   help="square input side [the median image side, within 16..96; detect: 160]")
    p.add_argument("--grayscale", action="store_true", default=None, help="one-channel input [if the images are grey]")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror-flip augmentation [on, except small grey images; detect: off]")
    p.add_argument("--resize", default="stretch", choices=["stretch", "letterbox", "center_crop"])
    p.add_argument("--epochs", type=int, help="training epochs of the cloud model [from the data size; detect: 30]")
    p.add_argument("--edge-epochs", type=int, help="training epochs of the edge model [as --epochs]")
    p.add_argument("--batch-size", type=int, help="[from the data; detect: 32]")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs [from the data size]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip the scikit-learn baseline")
    add_detect_arguments(p)


def add_detect_arguments(p) -> None:
    """The options only ``--task detect`` reads (its --input-size defaults to 160, --epochs to 30)."""
    p.add_argument("--detector", choices=["small", "large"], default="large",
                   help="detection: the cloud detector's size [large]")
    p.add_argument("--edge-detector", choices=["small", "large"],
                   help="detection: also train this detector for the device (big/little); default: the same detector")
    p.add_argument("--init", metavar="KERAS",
                   help="detection: start from this saved detector's weights (e.g. a bundle's cloud.keras) to train on")
    p.add_argument("--skip-bad", action="store_true",
                   help="detection: leave out images with bad annotations, report and count them (default: stop "
                        "at the first, naming its file and line)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_detect(args) -> int:
    from ..detect.train import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(
        data=args.data or "shapes", out=args.out, name=args.name, model=args.detector, edge_model=args.edge_detector,
        input_size=args.input_size or 160, resize=args.resize, epochs=args.epochs or 30,
        batch_size=args.batch_size or 32, seed=args.seed, augment=not args.no_augment, flip=bool(args.flip),
        skip_bad=args.skip_bad, progress=not args.quiet, init=args.init,
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
        edge_arch=args.edge_arch, edge_width=args.edge_width, edge_max_kb=args.edge_max_kb, distill=not args.no_distill,
        temperature=args.temperature, input_size=args.input_size, grayscale=args.grayscale, flip=args.flip,
        resize=args.resize, epochs=args.epochs, edge_epochs=args.edge_epochs, batch_size=args.batch_size,
        patience=args.patience, seed=args.seed, augment=not args.no_augment, baseline=not args.no_baseline,
        progress=not args.quiet,
    )
    bundle = train(cfg)
    print_summary(bundle.path, bundle.manifest.reports["train"])
    return 0


def print_summary(path, rep: dict) -> None:
    print(f"bundle written: {path}")
    for role in ("cloud", "edge_source"):
        if role in rep:
            r = rep[role]
            print(f"  {role:12s} {r['arch']} x{r['width']:g}: test accuracy {r['test']['accuracy']:.4f}, "
                  f"macro-F1 {r['test']['macro_f1']:.4f}, {r['params']:,} params, "
                  f"{r['epochs_run']} epochs (best {r['best_epoch']}), {r['seconds']:.1f}s")
    base = rep.get("baseline")
    if base:
        acc = base["test_accuracy"]
        print(f"  {'baseline':12s} {base['method']}: test accuracy {'n/a' if acc is None else f'{acc:.4f}'}")
        for w in base.get("warnings", []):
            print(f"  WARNING: {w}")
    plan = rep.get("edge_plan", {})
    if plan.get("role") == "cloud":
        print(f"  edge         the int8 copy of the cloud model ({plan['reason']})")
    print(f"  total {rep['seconds_total']:.1f}s; skipped files: {rep['skipped']['count']}")
