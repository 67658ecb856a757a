"""`hybrid-vision distill`: fine-tune the edge model on what the cloud answered for it, then re-quantize."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HELP = ("fine-tune a bundle's edge model on collected samples (the cloud's answers as soft targets) mixed with its "
        "training data, re-quantize and re-calibrate; refuse a model that is worse")


def add_arguments(p) -> None:
    p.add_argument("bundle", help="the quantized bundle whose edge model to improve (never written)")
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="DIR",
                   help="a folder of collected samples (CollectConfig(dir=...) on a device, or serve --collect's "
                        "per-key folder); repeat for several")
    p.add_argument("--out", required=True, help="the new bundle's directory")
    p.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs [8]")
    p.add_argument("--lr", type=float, help="peak learning rate [a quarter of the training recipe's]")
    p.add_argument("--batch-size", type=int, help="[the training recipe's]")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature [4]")
    p.add_argument("--soft-weight", type=float, default=0.9, help="the soft targets' share of the loss [0.9]")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of the collected samples held out to compare old and new [0.2]")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="points by which the new model may trail the old on either comparison [0: never]")
    p.add_argument("--require-gain", action="store_true",
                   help="also refuse a model that is not more accurate than B's on the test split (a tie is not "
                        "worth every device's download)")
    p.add_argument("--max-drop", type=float, default=1.0, help="as for quantize: int8 vs float, in points [1.0]")
    p.add_argument("--target-gap", type=float, default=0.5, help="as for quantize: routing calibration [0.5]")
    p.add_argument("--report", metavar="FILE", help="also write the report (accepted or refused) here as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def format_report(r: dict[str, Any]) -> str:
    """The comparison as a table, then what was learnt from."""
    c = r.get("collected", {})
    lines = [f"learnt from {c.get('train', 0)} collected sample(s) {c.get('by_kind', {})} and "
             f"{r.get('original', {}).get('train', 0)} original training images; {c.get('holdout', 0)} held out",
             f"{'':44s}{'old edge':>10s}{'new edge':>10s}"]
    for part, c in r.get("compare", {}).items():
        lines.append(f"{part} (n={c['n']}, against {c['reference']})".ljust(44)
                     + f"{_pct(c['old']):>10s}{_pct(c['new']):>10s}")
    cal = (r.get("quantize") or {}).get("calibration") or {}
    if cal:
        lines.append(f"new routing: {cal.get('metric')} >= {cal.get('threshold', float('nan')):.4g}, "
                     f"validation offload {_pct(cal.get('offload'))}")
    return "\n".join(lines)


def run(args) -> int:
    from ..distill import DistillConfig, distill
    from ..errors import DistillRefusedError

    cfg = DistillConfig(
        bundle=args.bundle, sources=args.sources, out=args.out, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, temperature=args.temperature, soft_weight=args.soft_weight, holdout=args.holdout,
        tolerance=args.tolerance, require_gain=args.require_gain, max_drop=args.max_drop, target_gap=args.target_gap,
        seed=args.seed, progress=not args.quiet,
    )
    try:
        result = distill(cfg)
    except DistillRefusedError as e:
        if e.report:
            print(format_report(e.report), file=sys.stderr)
            _write(args.report, e.report)
        raise
    print(format_report(result.report))
    _write(args.report, result.report)
    print(f"bundle written: {result.bundle.path} (version {result.bundle.manifest.version}); serve it and devices "
          "update over the air (check_for_update)")
    return 0


def _write(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
