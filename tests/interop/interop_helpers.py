"""Helpers of the interop suite: the main environment's python, and what the tests share."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL = "digits"


def main_python() -> str:
    exe = os.environ.get("HV_MAIN_PYTHON", str(REPO / ".venv" / "bin" / "python"))
    if not Path(exe).exists():
        raise RuntimeError(f"the main environment's python ({exe}) is missing: run `make venv`, or set HV_MAIN_PYTHON")
    return exe


def main_env() -> dict[str, str]:
    """The environment for main-venv subprocesses: this checkout first on the path, TensorFlow quiet."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def run_main(*args: str, timeout: float = 300) -> str:
    """Run a script with the main environment's python; its stdout, or an error with its output."""
    r = subprocess.run([main_python(), *args], capture_output=True, text=True, timeout=timeout, env=main_env(),
                       cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


class Assets:
    def __init__(self, root: Path):
        self.root = root
        self.bundle = root / MODEL
        self.images = sorted((root / "images").glob("*.png"))
        self.pngs = [p.read_bytes() for p in self.images]
        self.fp32 = np.load(root / "fp32.npy")
        self.uint8 = np.load(root / "uint8.npy")


def sdk_answers(url: str, assets: Assets, upload: str) -> dict:
    """Run the SDK (main environment) against ``url`` on every image; its JSON report (see sdk_predict.py)."""
    return json.loads(run_main(str(HERE / "sdk_predict.py"), str(assets.bundle), url, MODEL, upload,
                               *map(str, assets.images)).strip().splitlines()[-1])
