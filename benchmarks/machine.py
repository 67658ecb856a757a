"""What a benchmark ran on: CPU model, SIMD flags, cores, load, GPU if any. Shared by every script here."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def machine_info(**extra) -> dict:
    cpu, simd = platform.processor() or "", []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = next((ln for ln in lines if ln.startswith("flags")), "")
        simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma") if f" {f}" in flags]
    except OSError:
        pass
    info = {"cpu": cpu, "simd": simd, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None, **extra}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info
