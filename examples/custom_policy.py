#!/usr/bin/env python
"""A capacity probe of your own: on low battery, send images to the cloud instead of running the model here.

    python examples/custom_policy.py bundles/digits img1.png img2.png --cloud-url http://127.0.0.1:8000
    python examples/custom_policy.py bundles/digits img1.png --cloud-url ... --battery 12   # pretend: 12%

A probe is any object with a ``name`` and a ``check() -> ProbeResult``; the
classifier asks its probes before each edge inference. When one says no and a
cloud is configured, the image goes to the cloud with reason
``no_capacity:<name>``. Without a reachable cloud the edge still answers:
short of battery beats no answer. The battery level comes from
psutil.sensors_battery(); a machine without a battery (or ``--battery``) uses a
fixed level instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from edge_sdk import HybridClassifier, HybridVisionError
from edge_sdk.capacity import ProbeResult, default_probes


class BatteryProbe:
    """No edge inference below ``min_percent`` unless plugged in: the radio costs less than the model here."""

    name = "battery"

    def __init__(self, min_percent: float = 20.0, read: Callable[[], tuple[float, bool] | None] | None = None):
        self.min_percent = float(min_percent)
        self._read = read or read_battery

    def check(self) -> ProbeResult:
        reading = self._read()
        if reading is None:  # no battery: mains powered, always fine
            return ProbeResult(True, None, self.min_percent, "no battery")
        percent, plugged = reading
        ok = plugged or percent >= self.min_percent
        return ProbeResult(ok, percent, self.min_percent, "battery %, plugged in" if plugged else "battery %")


def read_battery() -> tuple[float, bool] | None:
    """(percent, plugged in) from psutil, or None when the machine has no battery psutil can see."""
    try:
        import psutil

        b = psutil.sensors_battery()
    except (ImportError, AttributeError, NotImplementedError, OSError):
        return None
    return None if b is None else (float(b.percent), bool(b.power_plugged))


def fixed_battery(percent: float) -> Callable[[], tuple[float, bool]]:
    """A fake reading, for machines without a battery and for trying the policy out."""
    return lambda: (percent, False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory (after `hybrid-vision quantize`)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--cloud-url", default=None, help="cloud server to use when the battery is low")
    p.add_argument("--api-key-env", default="HV_API_KEY", help="environment variable holding the API key [HV_API_KEY]")
    p.add_argument("--battery", type=float, default=None,
                   help="pretend the battery is at this percent (default: read it; 100 if there is none)")
    p.add_argument("--min-battery", type=float, default=20.0,
                   help="run the edge model only at or above this percent [20]")
    p.add_argument("--max-load-per-core", type=float, default=4.0,
                   help="the built-in CPU probe: run the edge model only below this load average per core [4]")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the bundle's routing threshold (a bundle calibrated on little data may offload "
                        "everything)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.battery is not None:
        read = fixed_battery(args.battery)
    else:
        read = read_battery if read_battery() is not None else fixed_battery(100.0)
    probe = BatteryProbe(args.min_battery, read)
    r = probe.check()
    level = "none" if r.value is None else f"{r.value:.0f}%"
    verdict = "allowed" if r.ok else f"skipped (below {args.min_battery:g}%)"
    print(f"battery: {level} -> edge model {verdict}")
    clf = HybridClassifier.from_bundle(
        args.bundle, cloud_url=args.cloud_url, api_key=os.environ.get(args.api_key_env),
        # the built-in memory/CPU/in-flight probes, then ours
        probes=[*default_probes(max_load_per_core=args.max_load_per_core), probe], threshold=args.threshold,
    )
    failed = 0
    with clf:
        for path in args.images:
            try:
                p = clf.predict(path)
            except HybridVisionError as e:
                failed += 1
                print(f"{path}\terror: {e}", file=sys.stderr)
                continue
            print(f"{path}\t{p.label}\t{p.confidence:.4f}\t{p.source}\t{p.reason}")
    s = clf.stats()
    print(f"by source: {s.by_source}; by reason: {s.by_reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
