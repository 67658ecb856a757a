"""The flywheel on CIFAR-10: does the edge model ask the cloud less each round, at the same cloud model?

Prints one JSON object. Targets (issue 17):

* after the last round, the offload needed to stay within 0.5 points of the
  cloud on the test split is >= 30% lower than in round 0 (the same cloud model);
* the edge's test accuracy rises each round, or that round's model is refused;
* the audit sample's accuracy estimate is within its 95% interval of the edge's
  true accuracy on the answers it gave alone (its confident ones) in the stream.

The run: train a bundle on ``--train`` labelled photos (``train/``, the first
N/10 of each class), quantize it, serve it (``hybrid-vision serve``, loopback,
an API key), and stream ``--stream`` more photos (the next ones of each class,
shuffled; their labels are never shown to the system) through the hybrid SDK
in ``--rounds`` rounds, the device collecting (``CollectConfig``, audits at
``--audit-rate``). After each round: ``distill`` from everything collected so
far, refusing a model that is no more accurate on the test split
(``require_gain``; ``--accept-ties`` takes ties); if the new model is accepted,
restart the service on it and update the device over the air (``check_for_update``). The test split is
``../shared/datasets/cifar10/test`` (3,000 photos), never trained on.

    python benchmarks/flywheel_bench.py [--train 3000] [--stream 6000] [--rounds 3] [--epochs E]
        [--edge-epochs E] [--distill-epochs D] [--accept-ties] [--audit-rate 0.05] [--edge-max-kb 256]
        [--target-gap 0.5] [--out DIR] [--bundle QUANTIZED_B0]

Needs the CIFAR-10 folders under $HV_DATASETS (default ../shared/datasets); exits 2 with a message without them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)

KEY = "flywheel-bench-key-0123456789"


def datasets_root() -> Path:
    return Path(os.environ.get("HV_DATASETS") or REPO / ".." / "shared" / "datasets").resolve()


def make_folders(cifar: Path, work: Path, n_train: int, n_stream: int, seed: int) -> tuple[Path, list]:
    """``work/labelled/{train,test}`` (symlinks: the first n_train/10 photos a class, all test photos) and the
    stream: the next n_stream/10 photos of each class as (path, label index), shuffled."""
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    per_train, per_stream = n_train // len(classes), n_stream // len(classes)
    labelled, stream = work / "labelled", []
    fresh = not labelled.exists()  # an --out kept from an earlier run: the same folders again
    for i, c in enumerate(classes):
        files = sorted((cifar / "train" / c).iterdir())
        if len(files) < per_train + per_stream:
            raise SystemExit(f"{cifar}/train/{c} has {len(files)} photos; need {per_train + per_stream}")
        if fresh:
            (labelled / "train" / c).mkdir(parents=True)
            for f in files[:per_train]:
                (labelled / "train" / c / f.name).symlink_to(f)
        stream += [(f, i) for f in files[per_train : per_train + per_stream]]
    if fresh:
        (labelled / "test").symlink_to(cifar / "test", target_is_directory=True)
    order = np.random.default_rng(seed).permutation(len(stream))
    return labelled, [stream[j] for j in order]


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the service)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 1)


def train_b0(labelled: Path, out: Path, args) -> tuple[Path, dict]:
    from quantize.pipeline import quantize_bundle
    from quantize.train import TrainConfig, train

    t0, c0 = time.perf_counter(), cpu_s()
    train(TrainConfig(data=str(labelled), out=str(out), epochs=args.epochs, edge_epochs=args.edge_epochs,
                      edge_max_kb=args.edge_max_kb, seed=args.seed, baseline=False, progress=True))
    quantize_bundle(out, progress=True, target_gap=args.target_gap)
    return out, {"seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_s() - c0, 1)}


class TestSplit:
    """The test split as tensors, and the cloud model's answers on it (computed once: the same cloud model)."""

    def __init__(self, bundle: Path):
        from edge_sdk.bundle import load_bundle
        from quantize import data as data_mod
        from quantize.models import load_safe
        from quantize.train import predict_probs

        b = load_bundle(bundle)
        test = data_mod.load_arrays(data_mod.split_from_info(b.manifest.data).test, b.manifest.input,
                                    b.manifest.preprocess, desc="load test")
        self.x, self.y = test.x, test.y
        self.cloud = predict_probs(load_safe(b.model_path("cloud"), RuntimeError), self.x)
        self.cloud_accuracy = float((self.cloud.argmax(1) == self.y).mean())

    def edge(self, bundle: Path) -> dict:
        """The bundle's int8 edge model on the test split: accuracy, and the offload needed to stay within
        0.5 points of the cloud (the lowest offload of the bundle's routing metric that does)."""
        from edge_sdk.bundle import load_bundle
        from quantize.calibrate import pick_point, sweep
        from quantize.tflite_eval import run_tflite

        b = load_bundle(bundle)
        p = run_tflite(b.model_path("edge").read_bytes(), self.x)
        out = {"version": b.manifest.version, "edge_accuracy": float((p.argmax(1) == self.y).mean()),
               "cloud_accuracy": self.cloud_accuracy, "offload_needed": {}}
        for metric in ("max_prob", "margin", "entropy"):
            choice = pick_point(sweep(p, self.cloud, self.y, metric), min_accuracy=self.cloud_accuracy - 0.005)
            out["offload_needed"][metric] = choice.offload
        out["metric"] = b.manifest.routing.metric
        return out


def stream_round(clf, items: list, labels: list[str]) -> dict:
    """Every image of ``items`` through ``predict``; what it cost and how right it was (the bench knows the truth)."""
    from tqdm.auto import tqdm

    store = clf.flywheel.collector.store
    first_seq = (store.seqs() or [-1])[-1] + 1
    before = clf.stats().collection.audit_bytes
    t0, c0 = time.perf_counter(), cpu_s()
    preds = [clf.predict(path) for path, _ in tqdm(items, desc="stream", unit="img", leave=False)]
    seconds = time.perf_counter() - t0
    assert clf.flywheel.flush(600)
    stats = clf.stats()
    truth = [labels[y] for _, y in items]
    return {
        "images": len(items), "offload": float(np.mean([p.source == "cloud" for p in preds])),
        "hybrid_accuracy": float(np.mean([p.label == t for p, t in zip(preds, truth, strict=True)])),
        "edge_true_accuracy_all": edge_accuracy_all(clf, items),
        "audit": audit_check(clf, store, first_seq, items, preds, truth),
        "bytes_uploaded": {"answers": sum(p.bytes_sent for p in preds),
                           "audits": stats.collection.audit_bytes - before},
        "seconds": round(seconds, 1), "cpu_s": round(cpu_s() - c0, 1),
        "collected_total": stats.collection.samples, "dropped": stats.collection.dropped_queue_full,
    }


def edge_accuracy_all(clf, items: list) -> float:
    """The device's edge model alone on every streamed image, against the truth (offloaded ones included)."""
    from edge_sdk.preprocess import preprocess

    spec, pp, model = clf.input_spec, clf.preprocess_spec, clf.model
    return float(np.mean([model.predict(preprocess(path, spec, pp)).argmax() == y for path, y in items]))


def audit_check(clf, store, first_seq: int, items: list, preds: list, truth: list[str]) -> dict:
    """This round's audit estimate (agreement with the cloud, 95% Wilson interval) against the edge's true
    accuracy on the answers it gave alone, and on the audited answers themselves (matched by their pixels)."""
    from edge_sdk.collect import audit_estimate
    from edge_sdk.preprocess import load_image, resize
    from edge_sdk.samples import read_samples

    audits = [s for s in read_samples(store.path, kinds=("audit",)) if s.seq >= first_seq]
    est = audit_estimate([s.meta for s in audits])
    alone = [p.label == t for p, t in zip(preds, truth, strict=True) if p.reason == "confident"]
    true_alone = float(np.mean(alone)) if alone else None
    h, w = clf.input_spec.height, clf.input_spec.width
    truth_of = {resize(load_image(path), h, w).tobytes(): t for (path, _), p, t in zip(items, preds, truth,
                                                                                        strict=True)
                if p.reason == "confident"}
    audited = [s.meta.edge_label == truth_of.get(s.image().tobytes()) for s in audits]
    return {"n": est.n, "estimate": est.accuracy, "low_95": est.low, "high_95": est.high,
            "edge_alone_answers": len(alone), "edge_alone_true_accuracy": true_alone,
            "audited_true_accuracy": float(np.mean(audited)) if audited else None,
            "within_interval": bool(est.low is not None and true_alone is not None
                                    and est.low <= true_alone <= est.high)}


def distill_round(bundle: Path, collected: Path, out: Path, args) -> dict:
    from quantize.distill import DistillConfig, distill
    from quantize.errors import DistillRefusedError

    t0, c0 = time.perf_counter(), cpu_s()
    try:
        r = distill(DistillConfig(bundle=str(bundle), sources=[str(collected)], out=str(out),
                                  epochs=args.distill_epochs, lr=args.distill_lr, target_gap=args.target_gap,
                                  require_gain=not args.accept_ties, seed=args.seed, progress=True))
        report, accepted = r.report, True
    except DistillRefusedError as e:
        report, accepted = e.report, False
    return {"accepted": accepted, "refused_because": report.get("refused_because"),
            "compare": report.get("compare"), "collected": report.get("collected"),
            "fit_seconds": (report.get("fit") or {}).get("seconds"),
            "seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_s() - c0, 1)}


def run_rounds(b0: Path, stream: list, work: Path, test: TestSplit, args) -> dict:
    from edge_sdk import HybridClassifier
    from edge_sdk.bundle import load_bundle
    from edge_sdk.options import CollectConfig
    from quantize.service_process import CloudService

    labels = load_bundle(b0).labels
    device_bundle = work / "device"
    for old in [device_bundle, work / "collected", *(work / f"b{r + 1}" for r in range(args.rounds))]:
        shutil.rmtree(old, ignore_errors=True)  # an --out kept from an earlier run
    shutil.copytree(b0, device_bundle)
    chunks = np.array_split(np.arange(len(stream)), args.rounds)
    serving, rounds, models = b0, [], [test.edge(b0)]
    collect = CollectConfig(dir=work / "collected", max_mb=2000, audit_rate=args.audit_rate, seed=args.seed)
    for r, idx in enumerate(chunks):
        with CloudService([serving], api_key=KEY, log_path=work / f"serve{r}.log") as svc:
            clf = HybridClassifier.from_bundle(device_bundle, cloud_url=svc.url, api_key=KEY, probes=[],
                                               deadline_ms=60_000, collect=collect)
            try:
                if r:
                    upd = clf.check_for_update()
                    rounds[-1]["ota"] = {"updated": upd.updated, "bytes": upd.bytes_downloaded,
                                         "threshold": upd.threshold}
                row = {"round": r, "model_version": load_bundle(device_bundle).manifest.version,
                       "threshold": clf.threshold, **stream_round(clf, [stream[i] for i in idx], labels)}
            finally:
                clf.close()
        row["distill"] = distill_round(serving, work / "collected", work / f"b{r + 1}", args)
        if row["distill"]["accepted"]:
            serving = work / f"b{r + 1}"
        models.append(test.edge(serving))
        rounds.append(row)
        print(json.dumps({"round": r, "offload_needed": models[-1]["offload_needed"],
                          "edge_accuracy": models[-1]["edge_accuracy"]}), file=sys.stderr, flush=True)
    return {"rounds": rounds, "models": models}


def targets(result: dict) -> dict:
    models, rounds = result["models"], result["rounds"]
    metric = models[0]["metric"]
    first, last = models[0]["offload_needed"][metric], models[-1]["offload_needed"][metric]
    reduction = 1 - last / first if first > 0 else None
    rises = [r["distill"]["accepted"] is False or models[i + 1]["edge_accuracy"] > models[i]["edge_accuracy"]
             for i, r in enumerate(rounds)]
    audits = [r["audit"]["within_interval"] for r in rounds if r["audit"]["n"]]
    return {"metric": metric, "offload_needed_round0": first, "offload_needed_last": last,
            "offload_reduction": reduction, "meets_offload_reduction": reduction is not None and reduction >= 0.30,
            "edge_accuracy_rises_or_refused": rises, "meets_accuracy": all(rises),
            "audit_within_interval": audits, "meets_audit": bool(audits) and all(audits)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000, help="labelled photos to train on [3000]")
    ap.add_argument("--stream", type=int, default=6000, help="unlabelled photos streamed through the SDK [6000]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="cloud training epochs [the recipe's]")
    ap.add_argument("--edge-epochs", type=int, help="edge training epochs [the recipe's]")
    ap.add_argument("--distill-epochs", type=int, default=8)
    ap.add_argument("--distill-lr", type=float, help="[distill's default: a quarter of the recipe's]")
    ap.add_argument("--accept-ties", action="store_true",
                    help="let distill accept a model that only ties the old one on the test split [refused: the "
                         "target is that the edge's test accuracy rises each round or its model is refused]")
    ap.add_argument("--audit-rate", type=float, default=0.05)
    ap.add_argument("--edge-max-kb", type=float, default=256.0,
                    help="the edge model's int8 size budget, KiB [256, train's default]: a smaller edge leaves the "
                         "cloud more to teach it")
    ap.add_argument("--target-gap", type=float, default=0.5,
                    help="the routing target of quantize and distill, points behind the cloud [0.5]; a small "
                         "calibration split can only certify a wide one, else the device offloads everything")
    ap.add_argument("--bundle", help="a quantized bundle trained by an earlier run on the same --train (reused)")
    ap.add_argument("--out", help="keep the work here (bundles, collected samples, service logs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cifar = datasets_root() / "cifar10"
    if not (cifar / "train").is_dir() or not (cifar / "test").is_dir():
        print(f"flywheel_bench: needs CIFAR-10 at {cifar} (train/ and test/); set HV_DATASETS", file=sys.stderr)
        return 2
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hv-flywheel-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        result: dict = {"machine": machine_info(), "config": vars(args)}
        labelled, stream = make_folders(cifar, work, args.train, args.stream, args.seed)
        if args.bundle:
            b0 = work / "b0"
            if Path(args.bundle).resolve() != b0.resolve():
                shutil.rmtree(b0, ignore_errors=True)
                shutil.copytree(args.bundle, b0)
            result["train"] = {"reused": args.bundle}
        else:
            b0, result["train"] = train_b0(labelled, work / "b0", args)
        result.update(run_rounds(b0, stream, work, TestSplit(b0), args))
        result["targets"] = targets(result)
        result["seconds_total"], result["cpu_s_total"] = round(time.perf_counter() - t0, 1), cpu_s()
        result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result, indent=2, default=str))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
