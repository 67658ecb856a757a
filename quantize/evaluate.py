"""`evaluate`: edge-only, cloud-only and hybrid on a labelled folder, as a table, a JSON report and plots.

The work is split by concern: :mod:`quantize.eval_data` (which images),
:mod:`quantize.eval_passes` (one pass of one mode: the edge SDK, the
in-process Keras model, or routed), :mod:`quantize.eval_report` (rows, the
trade-off curve, the table, plots and report.json). This module runs them.

Capacity probes are off here (``probes=[]``): the numbers describe the models
and the threshold, not how busy this machine happened to be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import Bundle, load_bundle
from edge_sdk.errors import HybridVisionError

from .errors import EvaluateError
from .eval_data import EvalData, resolve_data
from .eval_passes import ModeRun, hybrid_from, keras_cloud_pass, sdk_pass
from .eval_report import (
    ROWS,
    Row,
    Tradeoff,
    format_routing,
    format_table,
    hybrid_rule,
    make_row,
    model_sizes,
    plot_tradeoffs,
    routing_summary,
    tradeoff,
    write_outputs,
)

__all__ = [
    "EvaluateError", "Evaluation", "evaluate_bundle", "EvalData", "resolve_data", "Row", "Tradeoff",
    "format_routing", "format_table", "hybrid_rule", "plot_tradeoffs",
]

@dataclass
class Evaluation:
    """A finished evaluation: the rows, the trade-off, and everything else report.json holds."""

    rows: list[Row]
    tradeoff: Tradeoff
    report: dict[str, Any]

    def table(self, title: str = "") -> str:
        return format_table(self.rows, title)


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud and hybrid rows get their cloud answers: a server (``url``) or this process (None)."""

    url: str | None = None
    api_key: str | None = None
    model: str | None = None
    upload: str = "auto"
    deadline_ms: float = 10_000.0


@dataclass(frozen=True)
class Passes:
    """The three modes' answers on the images every mode could read."""

    edge: ModeRun
    cloud: ModeRun
    hybrid: ModeRun
    y: np.ndarray
    skipped: list[tuple[str, str]]


def open_for_evaluation(bundle_path: str | Path | Bundle, cloud_url: str | None) -> Bundle:
    """The bundle, if it has what an evaluation needs: an int8 model, and a cloud model or a cloud URL."""
    try:
        bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    except HybridVisionError as e:
        raise EvaluateError(str(e)) from None
    if not bundle.has("edge"):
        raise EvaluateError(
            f"{bundle.path}: the bundle has no int8 edge model yet; run `hybrid-vision quantize {bundle.path}` first"
        )
    if not bundle.has("cloud") and cloud_url is None:
        raise EvaluateError(f"{bundle.path}: the bundle has no cloud model to run in-process; pass --cloud-url")
    return bundle


def run_passes(bundle: Bundle, images: EvalData, cloud: CloudTarget, progress: bool) -> Passes:
    """Edge first (its unreadable images are dropped from every row), then cloud and hybrid."""
    paths = [p for p, _ in images.items]
    y_all = np.array([y for _, y in images.items])
    edge, skipped = sdk_pass(bundle, paths, "edge_only", progress=progress)
    bad = {s for s, _ in skipped}
    good = [i for i, p in enumerate(paths) if str(p) not in bad]
    if not good:
        raise EvaluateError(
            f"{images.description}: none of the {len(paths)} images could be read (e.g. {skipped[0][1]})"
        )
    paths, y = [paths[i] for i in good], y_all[good]
    routing = bundle.manifest.routing
    if cloud.url:
        kw: dict[str, Any] = dict(cloud_url=cloud.url, api_key=cloud.api_key, cloud_model=cloud.model,
                                  upload=cloud.upload, deadline_ms=cloud.deadline_ms, progress=progress)
        cloud_run, _ = sdk_pass(bundle, paths, "cloud_only", **kw)
        hybrid, _ = sdk_pass(bundle, paths, "auto", strict=False, **kw)
        if len(hybrid.probs) != len(y):
            raise EvaluateError("auto mode lost answers for some images; see the log")
    else:
        cloud_run = keras_cloud_pass(bundle, paths, upload=cloud.upload, progress=progress)
        hybrid = hybrid_from(edge, cloud_run, routing.metric, routing.threshold)
    return Passes(edge, cloud_run, hybrid, y, skipped)


def build_report(bundle: Bundle, images: EvalData, cloud: CloudTarget, passes: Passes, rows: list[Row],
                 trade: Tradeoff, sizes: dict[str, int]) -> dict[str, Any]:
    """Everything report.json holds (but the seconds and the files)."""
    routing = bundle.manifest.routing
    return {
        "bundle": str(bundle.path), "name": bundle.manifest.name, "labels": bundle.labels,
        "data": {"source": images.description, "split": images.split, "n": int(len(passes.y)),
                 "skipped": len(passes.skipped), "skipped_files": passes.skipped[:50]},
        "cloud": {"where": "http" if cloud.url else "in-process", "url": cloud.url, "upload": cloud.upload,
                  "model": (cloud.model or bundle.manifest.name) if cloud.url else None},
        "routing": routing_summary(routing, rows),
        "capacity_probes": "off",
        "model_bytes": sizes,
        "rows": [r.as_dict() for r in rows],
        "tradeoff": trade.as_dict(),
    }


def evaluate_bundle(
    bundle_path: str | Path | Bundle,
    data: str = "digits",
    *,
    cloud_url: str | None = None,
    api_key: str | None = None,
    cloud_model: str | None = None,
    upload: str = "auto",
    out_dir: str | Path | None = None,
    deadline_ms: float = 10_000.0,
    progress: bool = True,
    title: str | None = None,
    plot: bool = True,
) -> Evaluation:
    """Score edge-only, cloud-only and hybrid on ``data``; write report.json and plots to ``out_dir`` if given."""
    t_start = time.perf_counter()
    bundle = open_for_evaluation(bundle_path, cloud_url)
    cloud = CloudTarget(cloud_url, api_key, cloud_model, upload, deadline_ms)
    images = resolve_data(bundle, data)
    passes = run_passes(bundle, images, cloud, progress)
    sizes = model_sizes(bundle)
    rows = [make_row(name, run, passes.y, bundle.labels, sizes)
            for name, run in zip(ROWS, (passes.edge, passes.cloud, passes.hybrid), strict=True)]
    routing = bundle.manifest.routing
    trade = tradeoff(passes.edge, passes.cloud, passes.y, routing.metric, routing.threshold,
                     title or f"{bundle.manifest.name}: accuracy vs offload on {images.split} data (n={len(passes.y)})")
    if cloud_url:
        trade.measured = (rows[2].offload, rows[2].accuracy)
    report = build_report(bundle, images, cloud, passes, rows, trade, sizes)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    if out_dir is not None:
        report["files"] = write_outputs(Path(out_dir), rows, trade, bundle.labels, report, plot=plot)
    return Evaluation(rows, trade, report)
