"""Real photos: `train` + `quantize` with the default recipe on the shared CIFAR-10 subset; one JSON object.

Measures train and quantize seconds (wall and process CPU, with the load average),
the cloud, edge fp32 and edge int8 test accuracies on the shared test split,
int8 agreement overall and per class, the edge file's size, and the
scikit-learn baseline. Targets (issue 12): cloud >= 80%; edge int8 file <= 256 KB;
int8 agreement >= 99%; train + quantize <= 40 minutes on 2 cores; the
distilled edge at most 8 points behind the cloud.

Then routing (issue 13; benchmarks/photo_routing.py): the ECE before and after the
temperature; for every routing metric the offload needed to come within 0.5 points
of the cloud on the test split, and the oracle's; the calibrated threshold's
validation estimate and bound beside its test gap and offload; the
out-of-distribution AUROC with each data set as the other's outliers (a digits
bundle is trained for that unless --digits-bundle is given); each upload format's
bytes and cloud accuracy; and the accuracy-vs-offload plot (routing.png in --out).

    python benchmarks/photo_bench.py [--data DIR] [--out DIR] [--bundle BUNDLE] [--requantize]
                                     [--digits-bundle B] [--epochs N] [--edge-epochs N]

``--bundle`` reuses a bundle already trained on the data (quantized again only if
it has no edge model). Each part is a function returning one JSON section, so a
later benchmark (routing) can import this module and add its own sections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_info  # noqa: E402  (benchmarks/machine.py)
from photo_routing import digits_bundle, routing_sections, routing_targets  # noqa: E402

TARGETS = {"cloud_accuracy_min": 0.80, "edge_int8_max_bytes": 256 * 1024, "agreement_min": 0.99,
           "train_plus_quantize_max_s": 40 * 60, "edge_gap_max_points": 8.0}


class DataMissing(SystemExit):
    pass


def locate_data(arg: str | None) -> Path:
    """--data, else $HV_DATASETS/cifar10, else ../shared/datasets/cifar10 beside the repository."""
    base = Path(os.environ["HV_DATASETS"]) if os.environ.get("HV_DATASETS") else ROOT.parent / "shared" / "datasets"
    path = Path(arg) if arg else base / "cifar10"
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise DataMissing(f"photo_bench: the CIFAR-10 photo set is not at {path} (need train/ and test/ class "
                          "folders); pass --data DIR or set HV_DATASETS to the folder holding cifar10/")
    return path


@contextmanager
def timed(into: dict, key: str):
    """Wall and CPU seconds (this process and its children) and the 1-minute load before and after."""
    t0, c0, l0 = time.perf_counter(), os.times(), os.getloadavg()[0]
    yield
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + \
        (c1.children_system - c0.children_system)
    into[key] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu, 1),
                 "load_avg_1m": [round(l0, 2), round(os.getloadavg()[0], 2)]}


def train_section(data: Path, out: Path, args) -> dict:
    from quantize.train import TrainConfig, train

    times: dict = {}
    with timed(times, "train"):
        train(TrainConfig(data=str(data), out=str(out), epochs=args.epochs, edge_epochs=args.edge_epochs,
                          seed=args.seed, progress=not args.quiet))
    return times["train"]


def quantize_section(bundle: Path, args) -> dict:
    from quantize.pipeline import quantize_bundle

    times: dict = {}
    with timed(times, "quantize"):
        quantize_bundle(bundle, progress=not args.quiet, max_drop=100.0)
    return times["quantize"]


def accuracy_section(bundle: Path) -> dict:
    """What the bundle's reports say, on the shared test split."""
    from edge_sdk.bundle import load_bundle

    b = load_bundle(bundle)
    tr, q = b.manifest.reports["train"], b.manifest.reports["quantize"]
    t = q["test"]
    by_class = t.get("agreement_int8_vs_fp32_by_class", {})
    edge_file = b.model_path("edge").stat().st_size
    cloud, edge8 = t["accuracy"]["cloud_keras"], t["accuracy"]["edge_int8"]
    little = tr.get("edge_source", tr["cloud"])
    return {
        "test_images": t["n"], "edge_role": q["edge_role"],
        "cloud": {"arch": tr["cloud"]["arch"], "width": tr["cloud"]["width"], "params": tr["cloud"]["params"],
                  "epochs": tr["cloud"]["epochs_run"], "accuracy": cloud},
        "edge": {"arch": little["arch"], "width": little["width"], "params": little["params"],
                 "distilled": little.get("distilled", False), "accuracy_keras_fp32": t["accuracy"]["edge_keras"],
                 "accuracy_tflite_fp32": t["accuracy"]["edge_tflite_fp32"], "accuracy_int8": edge8,
                 "file_bytes": edge_file, "gap_to_cloud_points": round(100 * (cloud - edge8), 2)},
        "agreement_int8_vs_fp32": {"overall": t["agreement_int8_vs_fp32"],
                                   "per_class": {k: v["agreement"] for k, v in by_class.get("per_class", {}).items()}},
        "baseline": tr.get("baseline"),
    }


def targets_section(acc: dict, seconds: float | None) -> dict:
    e = acc["edge"]
    return {
        "cloud_accuracy_ge_80": acc["cloud"]["accuracy"] >= TARGETS["cloud_accuracy_min"],
        "edge_int8_le_256kb": e["file_bytes"] <= TARGETS["edge_int8_max_bytes"],
        "agreement_ge_99": acc["agreement_int8_vs_fp32"]["overall"] >= TARGETS["agreement_min"],
        "edge_within_8_points": e["gap_to_cloud_points"] <= TARGETS["edge_gap_max_points"],
        "train_plus_quantize_le_40_min": None if seconds is None else seconds <= TARGETS["train_plus_quantize_max_s"],
    }


def prepare_bundle(args, data: Path, out: Path, result: dict) -> Path:
    """Train (and quantize) a new bundle at ``out``, or reuse --bundle; fills result['seconds']."""
    from edge_sdk.bundle import load_bundle

    if args.bundle:
        src = Path(args.bundle)
        if src.resolve() != out.resolve():
            shutil.copytree(src, out, dirs_exist_ok=False)
        result["bundle_source"] = str(src)
    else:
        result["seconds"]["train"] = train_section(data, out, args)
    if args.requantize or not load_bundle(out).has("edge"):
        result["seconds"]["quantize"] = quantize_section(out, args)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="the photo set (train/ and test/ class folders) [$HV_DATASETS/cifar10]")
    ap.add_argument("--out", default="bench-out/photo", help="where the bundle is written [bench-out/photo]")
    ap.add_argument("--bundle", help="reuse this trained bundle instead of training (copied to --out)")
    ap.add_argument("--epochs", type=int, help="cloud epochs [the recipe's]")
    ap.add_argument("--edge-epochs", type=int, help="edge epochs [the recipe's]")
    ap.add_argument("--requantize", action="store_true", help="quantize --bundle again (new routing)")
    ap.add_argument("--digits-bundle", help="a quantized digits bundle for the OOD pair [trained into --out]")
    ap.add_argument("--guarantee-repeats", type=int, default=40,
                    help="random test halves the threshold's guarantee is checked on (0: skip) [40]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        data = locate_data(args.data)
    except DataMissing as e:
        print(str(e), file=sys.stderr)
        return 2
    out = Path(args.out) / "cifar_bigsmall"
    if out.exists() and not args.bundle:
        print(f"photo_bench: {out} exists; remove it or pass --bundle {out} to reuse it", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "photo", "machine": machine_info(), "data": str(data), "bundle": str(out),
                    "seconds": {}}
    prepare_bundle(args, data, out, result)
    sec = result["seconds"]
    total = sum(s["wall_s"] for s in sec.values()) if "train" in sec and "quantize" in sec else None
    result["seconds"]["train_plus_quantize_wall_s"] = total
    result["accuracy"] = acc = accuracy_section(out)
    result["targets"] = targets_section(acc, total)
    digits = Path(args.digits_bundle) if args.digits_bundle else digits_bundle(Path(args.out) / "digits",
                                                                                 not args.quiet)
    result.update(routing_sections(out, data / "test", digits, Path(args.out) / "routing.png", not args.quiet,
                                   args.guarantee_repeats))
    result["targets"]["routing"] = routing_targets(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
