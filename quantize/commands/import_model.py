"""`hybrid-vision import`: wrap an existing Keras model into a bundle."""

from __future__ import annotations

HELP = "wrap a Keras model you already have (.keras) into a bundle; logits get a softmax"


def add_arguments(p) -> None:
    p.add_argument("model", help="the .keras file")
    p.add_argument("--labels", required=True, help="text file, one label per line, in output order")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--input-size", type=int, help="square input side, when the model's is dynamic")
    p.add_argument("--preprocess", default="unit", choices=["unit", "tf", "imagenet", "raw"],
                   help="normalisation the model expects: unit [0,1], tf [-1,1], imagenet mean/std, raw 0..255 [unit]")
    p.add_argument("--resize", default="stretch", choices=["stretch", "letterbox", "center_crop"])


def run(args) -> int:
    from ..importer import ImportConfig, import_model

    bundle, report = import_model(ImportConfig(
        model=args.model, labels=args.labels, out=args.out, name=args.name, input_size=args.input_size,
        preprocess=args.preprocess, resize=args.resize,
    ))
    m = bundle.manifest
    print(f"bundle written: {bundle.path}")
    print(f"  {len(m.labels)} labels, input {m.input.height}x{m.input.width}x{m.input.channels}, "
          f"preprocess {args.preprocess}, {report['params']:,} params"
          + (", softmax added (the model output logits)" if report["added_softmax"] else ""))
    print("  next: hybrid-vision quantize", bundle.path)
    return 0
