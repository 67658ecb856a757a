#!/usr/bin/env python
"""The whole flywheel on loopback: device, service, collect, distill, over-the-air update, device again.

    python examples/flywheel.py [--out flywheel-out] [--labelled 40] [--epochs 20] [--distill-epochs 10]

On the built-in digits: a bundle is trained on ``--labelled`` images a class
(a cloud CNN and a little edge CNN), quantized and served (``hybrid-vision
serve``, an API key, loopback). The device streams the rest of the digits,
which it has no labels for, in two rounds. In round 1 it collects what it sends
to the cloud and audits a share of its confident answers
(``CollectConfig``). Then ``hybrid-vision distill`` fine-tunes the edge model
on what was collected, re-quantizes and re-calibrates it (or refuses it if it
is worse); the service restarts on the new bundle, and the device updates over
the air (``check_for_update``) and streams round 2. The table at the end shows
each round's model on a held-out test set and on the stream. The same cycle
with the CLI::

    hybrid-vision serve B1 ...                                   # the device collects (CollectConfig)
    hybrid-vision distill B1 --from collected/ --out B2          # refuses a worse model; B1 untouched
    hybrid-vision serve B2 ...                                   # same cloud model, new edge model
    clf.check_for_update()                                       # on the device: verified, swapped in
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # training and conversion are chatty

import numpy as np  # noqa: E402

from edge_sdk import HybridClassifier, load_bundle  # noqa: E402
from edge_sdk.collect import audit_estimate  # noqa: E402
from edge_sdk.options import CollectConfig  # noqa: E402
from edge_sdk.samples import read_samples  # noqa: E402

KEY_ENV = "HV_API_KEY"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="flywheel-out", help="work folder: bundles, collected samples, logs [flywheel-out]")
    p.add_argument("--labelled", type=int, default=40, help="labelled digits a class to train on [40]")
    p.add_argument("--test", type=int, default=40, help="digits a class held out as the test set [40]")
    p.add_argument("--epochs", type=int, default=20, help="training epochs [20]")
    p.add_argument("--edge-width", type=float, default=0.5, help="the edge CNN's width, the cloud's being 1 [0.5]")
    p.add_argument("--distill-epochs", type=int, default=10, help="fine-tuning epochs [10]")
    p.add_argument("--audit-rate", type=float, default=0.1, help="share of confident answers audited [0.1]")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def split_digits(out: Path, labelled: int, test: int, seed: int) -> tuple[Path, list[tuple[Path, str]]]:
    """``out/labelled/{train,test}/<digit>/`` (symlinks) and the unlabelled stream: (path, true digit), shuffled."""
    from quantize.data import resolve

    root, stream = resolve("digits"), []
    for d in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / d).glob("*.png"))
        for part, chosen in (("train", files[:labelled]), ("test", files[-test:])):
            (out / "labelled" / part / d).mkdir(parents=True)
            for f in chosen:
                (out / "labelled" / part / d / f.name).symlink_to(f)
        stream += [(f, d) for f in files[labelled:-test]]
    order = np.random.default_rng(seed).permutation(len(stream))
    return out / "labelled", [stream[i] for i in order]


def train_bundle(labelled: Path, dest: Path, args: argparse.Namespace) -> Path:
    """A cloud CNN and a narrower edge CNN distilled from it; int8, parity, calibrated routing."""
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    train(TrainConfig(data=str(labelled), out=str(dest), edge_arch="cnn", edge_width=args.edge_width,
                      epochs=args.epochs, seed=args.seed, baseline=False, progress=False))
    quantize_bundle(dest, progress=False)
    return dest


def stream(clf: HybridClassifier, items: list[tuple[Path, str]]) -> dict:
    """Classify each image as a camera app would; what it cost (the example knows the truth, the device does not)."""
    t0, sent0 = time.perf_counter(), clf.stats().bytes_sent
    preds = [clf.predict(path) for path, _ in items]
    clf.flywheel.flush()
    return {"n": len(items), "offload": np.mean([p.source == "cloud" for p in preds]),
            "accuracy": np.mean([p.label == y for p, (_, y) in zip(preds, items, strict=True)]),
            "bytes": clf.stats().bytes_sent - sent0, "seconds": time.perf_counter() - t0}


def on_test_set(bundle: Path, test_dir: Path) -> float:
    """The bundle's int8 edge model alone on the held-out test set."""
    items = [(p, p.parent.name) for p in sorted(test_dir.rglob("*.png"))]
    with HybridClassifier.from_bundle(bundle, mode="edge_only", probes=[]) as edge:
        return float(np.mean([edge.predict(p).label == y for p, y in items]))


def distill_round(b: Path, collected: Path, dest: Path, epochs: int, seed: int) -> tuple[Path, str]:
    """``hybrid-vision distill b --from collected --out dest``; the bundle to serve next, and what happened."""
    from quantize.distill import DistillConfig, distill
    from quantize.errors import DistillRefusedError

    try:
        r = distill(DistillConfig(bundle=str(b), sources=[str(collected)], out=str(dest), epochs=epochs, seed=seed,
                                  progress=False))
    except DistillRefusedError as e:
        return b, f"refused ({'; '.join(e.report.get('refused_because') or [str(e)])})"
    h, t = r.report["compare"]["holdout"], r.report["compare"]["test"]
    return dest, (f"distilled: held-out agreement with the cloud {100 * h['old']:.1f}% -> {100 * h['new']:.1f}%, "
                  f"test {100 * t['old']:.1f}% -> {100 * t['new']:.1f}%")


def device_round(rnd: int, serving: Path, device_bundle: Path, chunk: list, key: str, args, out: Path) -> tuple:
    """Serve ``serving``; the device updates over the air (after round 1), streams ``chunk`` and collects."""
    from quantize.service_process import CloudService

    collect = CollectConfig(dir=out / "collected", audit_rate=args.audit_rate, seed=args.seed + rnd)
    with CloudService([serving], api_key=key, log_path=out / f"serve{rnd}.log", progress=False) as svc, \
            HybridClassifier.from_bundle(device_bundle, cloud_url=svc.url, api_key=key, collect=collect,
                                         deadline_ms=10_000, probes=[]) as clf:  # no capacity probes: a busy
        # development machine would send images to the cloud for want of CPU, not because they are hard
        if rnd > 1:
            u = clf.check_for_update()
            print(f"[4/5] over the air: updated={u.updated}, {u.bytes_downloaded} bytes; threshold {clf.threshold:.3f}")
        print(f"[{2 if rnd == 1 else 5}/5] round {rnd}: streaming {len(chunk)} digits through the device")
        version = load_bundle(device_bundle).manifest.version
        return version, on_test_set(device_bundle, out / "labelled" / "test"), stream(clf, chunk)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    key = os.environ.get(KEY_ENV) or "flywheel-example-key"
    labelled, items = split_digits(out, args.labelled, args.test, args.seed)
    print(f"[1/5] training on {args.labelled} labelled digits a class; {len(items)} more to stream, unlabelled")
    b1 = train_bundle(labelled, out / "b1", args)
    device_bundle = shutil.copytree(b1, out / "device")  # the device's own copy: an update is written into it
    half, rows = len(items) // 2, []
    serving, note = b1, "trained"
    for rnd, chunk in enumerate((items[:half], items[half:]), start=1):
        rows.append((rnd, note, *device_round(rnd, serving, device_bundle, chunk, key, args, out)))
        if rnd == 1:
            print("[3/5] distill: fine-tune the edge model on what was collected, re-quantize, compare")
            serving, note = distill_round(b1, out / "collected", out / "b2", args.distill_epochs, args.seed)
            print(f"      {note}")
    report(rows, out / "collected")
    return 0


def report(rows, collected: Path) -> None:
    print(f"\n{'round':5s} {'model':>5s} {'edge test acc':>13s} {'offload':>8s} {'hybrid acc':>10s} {'KB up':>7s}  "
          "the model")
    for rnd, note, version, test_acc, s in rows:
        print(f"{rnd:5d} {'v' + version:>5s} {100 * test_acc:12.1f}% {100 * s['offload']:7.1f}% "
              f"{100 * s['accuracy']:9.1f}% {s['bytes'] / 1024:7.1f}  {note}")
    est = audit_estimate([s.meta for s in read_samples(collected, kinds=("audit",))])
    if est.n:
        print(f"audit: the edge agreed with the cloud on {est.agree} of {est.n} audited confident answers "
              f"({100 * est.accuracy:.1f}%, 95% interval {100 * est.low:.1f}-{100 * est.high:.1f}%)")


if __name__ == "__main__":
    sys.exit(main())
