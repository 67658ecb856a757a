"""`hybrid-vision demo`: the whole product on the built-in digits, in a few minutes on a laptop.

Stages: train the big/little pair (a CNN for the cloud, a quarter-width CNN for
the device) -> derive the same-CNN bundle from the same cloud model (so the big
model is trained once) -> quantize and calibrate both -> start the real cloud
service in a child process on a free loopback port, with an API key -> run
`hybrid-vision evaluate --cloud-url` (the edge SDK over the test split against
the service in edge_only, cloud_only and auto modes) -> stop the service (also
on Ctrl-C or SIGTERM) -> tables, report.json, plots.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_sdk.bundle import Bundle, load_bundle, write_bundle
from edge_sdk.errors import HybridVisionError

log = logging.getLogger(__name__)

CONFIGS = {
    "same_cnn": "same-CNN: the edge runs the int8 copy of the cloud CNN",
    "big_little": "big/little: the edge runs a small int8 CNN, the cloud the full CNN",
}
BUNDLE_NAMES = {"same_cnn": "digits_same_cnn", "big_little": "digits_big_little"}
DETECT_NAME = "shapes_detector"


class DemoError(HybridVisionError):
    """The demo cannot run as asked (e.g. --bundle is not a digits bundle, nothing to --reuse)."""


@dataclass
class DemoConfig:
    out: str = "demo-out"
    epochs: int | None = None  # None: the training recipe's (from the data size)
    patience: int | None = None
    quick: bool = False  # for tests: few epochs, fewer calibration images, shorter latency runs
    bundle: str | None = None  # a trained digits bundle to start from instead of training the cloud model
    reuse: bool = False  # reuse the quantized bundles a previous run left in `out`
    edge_arch: str = "cnn"
    edge_width: float = 0.25
    upload: str = "auto"
    seed: int = 0
    progress: bool = True
    detect: bool = True  # the short detection section (quantize.detect.demo)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, so every ``finally`` (server stop) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _epochs(cfg: DemoConfig) -> str:
    return f"{cfg.epochs} epochs each" if cfg.epochs else "epochs from the training recipe"


def _say(msg: str) -> None:
    print(msg, flush=True)


# --- stages ----------------------------------------------------------------------------------


def train_pair(cfg: DemoConfig, dest: Path) -> Bundle:
    """A big/little bundle (cloud + edge_source) at ``dest``: trained here, or built on cfg.bundle's cloud model."""
    from .train import TrainConfig, train

    if cfg.bundle is None:
        _say(f"[1/4] training big/little on digits: cloud cnn x1, edge {cfg.edge_arch} x{cfg.edge_width:g} distilled "
             f"from it ({_epochs(cfg)}, seed {cfg.seed})")
        return train(TrainConfig(data="digits", out=str(dest), name=BUNDLE_NAMES["big_little"], epochs=cfg.epochs,
                                 patience=cfg.patience, edge_arch=cfg.edge_arch, edge_width=cfg.edge_width,
                                 seed=cfg.seed, progress=cfg.progress))
    base = load_bundle(cfg.bundle)
    if base.manifest.data is None or base.manifest.data.source != "digits" or not base.has("cloud"):
        raise DemoError(
            f"--bundle {cfg.bundle}: the demo needs a bundle trained on the built-in digits with a cloud model"
        )
    files: dict[str, Any] = {"cloud.keras": base.model_path("cloud")}
    man = base.manifest.model_copy(deep=True)
    man.name = BUNDLE_NAMES["big_little"]
    man.models = {"cloud": man.models["cloud"]}
    man.reports = {"train": dict(base.manifest.reports.get("train", {}))}
    man.routing = type(man.routing)()
    with tempfile.TemporaryDirectory() as td:
        if base.has("edge_source"):
            _say(f"[1/4] using {cfg.bundle}: its cloud and edge models")
            files["edge_source.keras"] = base.model_path("edge_source")
            man.models["edge_source"] = base.manifest.models["edge_source"]
        else:
            _say(f"[1/4] using {cfg.bundle}'s cloud model; training the little edge "
                 f"{cfg.edge_arch} x{cfg.edge_width:g} ({_epochs(cfg)})")
            info, inp = base.manifest.data, base.manifest.input
            little = train(TrainConfig(
                data="digits", out=str(Path(td) / "little"), arch=cfg.edge_arch, width=cfg.edge_width,
                epochs=cfg.epochs,
                patience=cfg.patience, seed=info.seed, val_fraction=info.val_fraction, test_fraction=info.test_fraction,
                input_size=inp.height, grayscale=inp.channels == 1, resize=base.manifest.preprocess.resize,
                progress=cfg.progress,
            ))
            if little.manifest.input != inp or little.labels != base.labels:
                raise DemoError("the little model's input or labels differ from the bundle's")
            files["edge_source.keras"] = little.model_path("cloud")
            man.models["edge_source"] = little.manifest.models["cloud"].model_copy(update={"file": "edge_source.keras"})
            man.reports["train"]["edge_source"] = little.manifest.reports["train"]["cloud"]
        return write_bundle(dest, man, files)


def same_cnn_from(pair: Bundle, dest: Path) -> Bundle:
    """The same-CNN bundle: the pair's cloud model only, so `quantize` makes its int8 copy the edge model."""
    man = pair.manifest.model_copy(deep=True)
    man.name = BUNDLE_NAMES["same_cnn"]
    man.models = {"cloud": man.models["cloud"]}
    man.reports = {"train": {k: v for k, v in man.reports.get("train", {}).items() if k != "edge_source"}}
    files: dict[str, Any] = {"cloud.keras": pair.model_path("cloud")}
    png = pair.path / "train_confusion_cloud.png"
    if png.exists():
        files[png.name] = png
    return write_bundle(dest, man, files)


DEMO_TARGET_GAP = 3.0
"""The demo's routing target, in points. The digits' validation split has 269 images, half of which certify the
threshold: with 130 images the Clopper-Pearson bound alone is 2.3 points at delta 0.1, so the default 0.5-point
target cannot be certified and every image would go to the cloud (as it should: quantize says so). The demo asks
for what 130 images can prove."""


def _quantize(paths: dict[str, Path], cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    from .pipeline import quantize_bundle

    out = {}
    for i, (name, path) in enumerate(paths.items()):
        _say(f"[2/4] quantizing and calibrating {name} ({i + 1}/{len(paths)}); routing target: within "
             f"{DEMO_TARGET_GAP:g} points of the cloud with probability 0.9 (what 130 calibration images can prove)")
        kw = dict(num_calib=100, latency_runs=30, max_drop=5.0) if cfg.quick else {}
        out[name] = quantize_bundle(path, progress=cfg.progress, target_gap=DEMO_TARGET_GAP, **kw)
    return out


def run_evaluate(bundle: Path, url: str, key: str, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """`hybrid-vision evaluate --cloud-url` in a child process; returns its report.json.

    A child, not a call: this process has trained models, and TensorFlow's idle
    thread pools left behind would add their wake-ups to the edge latencies
    measured here. The child imports no TensorFlow, like a device.
    """
    cmd = [sys.executable, "-m", "edge_sdk.cli", "evaluate", str(bundle), "--data", "digits", "--cloud-url", url,
           "--upload", cfg.upload, "--out", str(out), *([] if cfg.progress else ["--quiet"])]
    env = {**os.environ, "HV_API_KEY": key, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # stderr (the progress bars) goes to ours
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.txt").write_text(r.stdout, encoding="utf-8")
    if r.returncode != 0:
        raise DemoError(f"hybrid-vision evaluate {bundle.name} failed with status {r.returncode} (its error is above)")
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _reusable(paths: dict[str, Path]) -> bool:
    try:
        return all(load_bundle(p).has("edge") for p in paths.values())
    except HybridVisionError:
        return False


# --- the demo ----------------------------------------------------------------------------------


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage; returns the report (also written to ``cfg.out``/report.json)."""
    from .evaluate import Tradeoff, plot_tradeoffs

    t0 = time.perf_counter()
    load_start = _load()
    out = Path(cfg.out)
    paths = {name: out / "bundles" / BUNDLE_NAMES[name] for name in CONFIGS}
    detect_path = out / "bundles" / DETECT_NAME
    served = [*paths.values(), *([detect_path] if cfg.detect else [])]
    seconds: dict[str, float] = {}
    with signals_interrupt():
        if cfg.reuse:
            if not _reusable({**paths, **({"detect": detect_path} if cfg.detect else {})}):
                raise DemoError(
                    f"--reuse: {out}/bundles holds no quantized bundles from an earlier demo; run without --reuse"
                )
            _say(f"[1-2/4] reusing the quantized bundles in {out / 'bundles'}")
        else:
            out.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            pair = train_pair(cfg, paths["big_little"])
            same_cnn_from(pair, paths["same_cnn"])
            seconds["train"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            _quantize(paths, cfg)
            seconds["quantize"] = round(time.perf_counter() - t, 1)
            if cfg.detect:
                t = time.perf_counter()
                _train_detector(detect_path, cfg)
                seconds["detect_train_quantize"] = round(time.perf_counter() - t, 1)
        bundles = {name: load_bundle(p) for name, p in paths.items()}

        from .service_process import CloudService

        key = secrets.token_urlsafe(24)
        _say("[3/4] starting the cloud service (hybrid-vision serve) on a free loopback port, with an API key")
        t = time.perf_counter()
        evals: dict[str, dict[str, Any]] = {}
        with CloudService(served, log_path=out / "serve.log", api_key=key, progress=cfg.progress) as svc:
            seconds["serve_start"] = round(time.perf_counter() - t, 1)
            _say(f"      cloud service ready at {svc.url} (pid {svc.pid})")
            t = time.perf_counter()
            for i, (name, path) in enumerate(paths.items()):
                _say(f"[4/4] hybrid-vision evaluate {name} --data digits --cloud-url {svc.url}: the edge SDK over "
                     f"the test split in edge_only, cloud_only and auto modes ({i + 1}/{len(paths)})")
                evals[name] = run_evaluate(path, svc.url, key, out / name, cfg)
            seconds["evaluate"] = round(time.perf_counter() - t, 1)
            detection = _evaluate_detector(detect_path, svc.url, key, out, cfg, seconds) if cfg.detect else None
        _say(f"      cloud service stopped (exit status {svc.proc.returncode})")

    seconds["total"] = round(time.perf_counter() - t0, 1)
    panels = [Tradeoff.from_report(e, f"{CONFIGS[n].split(':')[0]}: digits test split (n={e['data']['n']})")
              for n, e in evals.items()]
    plot = plot_tradeoffs(panels, out / "accuracy_vs_offload.png")
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_start": load_start, "load_avg_1m_end": _load()},
        "seconds": seconds,
        "service": {"log": str(out / "serve.log"), "api_key": "set (random, not stored)"},
        "configs": {},
        "files": {"report": str(out / "report.json"), "accuracy_vs_offload": str(plot)},
    }
    for name, e in evals.items():
        b = bundles[name]
        rep = dict(e)
        rep["description"] = CONFIGS[name]
        rep["train"] = _train_summary(b)
        rep["quantize"] = _quantize_summary(b)
        report["configs"][name] = rep
    if detection is not None:
        report["detection"] = detection
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _train_detector(dest: Path, cfg: DemoConfig) -> None:
    from .detect.demo import QUICK, DetectDemoConfig, build_bundle

    d = QUICK if cfg.quick else DetectDemoConfig()
    _say(f"[2/4] detection: training a small CenterNet on {d.train_images} built-in shapes images "
         f"({d.epochs} epochs), then quantizing it to int8")
    build_bundle(dest, DetectDemoConfig(d.epochs, d.train_images, d.val_images, d.test_images, cfg.progress), cfg.seed)


def _evaluate_detector(path: Path, url: str, key: str, out: Path, cfg: DemoConfig,
                       seconds: dict[str, float]) -> dict[str, Any]:
    from .detect.demo import run_evaluate as evaluate_detect

    _say(f"[4/4] hybrid-vision evaluate {DETECT_NAME} --data shapes --cloud-url {url}: HybridDetector over the "
         "shapes test split in edge_only, cloud_only and auto modes")
    t = time.perf_counter()
    rep = evaluate_detect(path, url, key, out / "detection", cfg.progress)
    seconds["detect_evaluate"] = round(time.perf_counter() - t, 1)
    tr = load_bundle(path).manifest.reports.get("train", {})
    rep["train"] = {"epochs_run": tr.get("cloud", {}).get("epochs_run"), "images": tr.get("counts", {}).get("train")}
    return rep


def print_summary(report: dict[str, Any]) -> None:
    from .evaluate import Row, format_table, hybrid_rule

    for _name, rep in report["configs"].items():
        rows = [Row(**r) for r in rep["rows"]]
        rule = hybrid_rule(rep["routing"]["metric"], rep["routing"]["threshold"])
        _say("")
        _say(format_table(rows, f"{rep['description']}\n(digits test split, n={rep['data']['n']}; edge SDK against "
                                f"the service; {rule})"))
    if "detection" in report:
        from .detect.demo import summary

        _say("")
        _say(summary(report["detection"], report["detection"]["train"]))
    s = report["seconds"]
    _say("")
    _say(f"demo finished in {s['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in s.items() if k != "total")
         + f") on {report['machine']['cpus']} CPU(s)")
    _say(f"report: {report['files']['report']}")
    _say(f"plot:   {report['files']['accuracy_vs_offload']}")


def _train_summary(b: Bundle) -> dict[str, Any]:
    tr = b.manifest.reports.get("train", {})
    return {role: {k: tr[role].get(k) for k in ("arch", "width", "params", "epochs_run", "best_epoch", "seconds")}
            | {"test_accuracy": tr[role].get("test", {}).get("accuracy")}
            for role in ("cloud", "edge_source") if role in tr}


def _quantize_summary(b: Bundle) -> dict[str, Any]:
    q = b.manifest.reports.get("quantize", {})
    return {"edge_role": q.get("edge_role"), "test_accuracy": q.get("test", {}).get("accuracy"),
            "accuracy_drop_points": q.get("test", {}).get("accuracy_drop_points"),
            "size_bytes": q.get("size_bytes"), "calibration": q.get("calibration")}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
