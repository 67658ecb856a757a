"""The command line prints its own output only: native libraries' log lines appear with -v, not without."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from edge_helpers import cached_tiny_bundle, tiny_images

REPO = Path(__file__).resolve().parent.parent
NATIVE_NOISE = ("XNNPACK", "absl::InitializeLog", "oneDNN", "cpu_feature_guard", "I0000", "W0000")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_bundle(tmp_path_factory, seed=0)


def _predict(tiny: Path, image: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP_", "HV_"))}  # as a user's shell has it
    cmd = [sys.executable, "-m", "edge_sdk.cli", *flags, "predict", str(tiny), str(image), "--mode", "edge_only"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_native_log_lines_only_with_verbose(tiny, tmp_path):
    import cv2

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), tiny_images(1)[0])
    quiet = _predict(tiny, image)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # not even LiteRT's "Created TensorFlow Lite XNNPACK delegate"
    assert quiet.stdout.startswith(str(image)) and quiet.stdout.count("\n") == 1
    verbose = _predict(tiny, image, "-v")
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
    assert any(noise in verbose.stderr for noise in NATIVE_NOISE), verbose.stderr  # -v shows what the libraries say
