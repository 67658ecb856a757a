"""Shared fixtures. Models are trained once per session, quickly, on the built-in digits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

QUICK_EPOCHS = int(os.environ.get("HV_TEST_EPOCHS", "12"))

# tests/interop runs the official Triton and KServe clients in their own environment (`make interop`, which sets
# HV_INTEROP=1); the main run does not collect it.
collect_ignore = [] if os.environ.get("HV_INTEROP") else ["interop"]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hv")


@pytest.fixture(scope="session")
def digits_dir() -> Path:
    """The built-in digits written out as PNG folders (one per class)."""
    from quantize.data import resolve

    return resolve("digits")


@pytest.fixture(scope="session")
def trained_bundle_session(session_dir) -> Path:
    """A digits bundle with a cloud model only (not yet quantized). Do not modify: copy it."""
    from quantize.train import TrainConfig, train

    out = session_dir / "trained"
    train(TrainConfig(data="digits", out=str(out), epochs=QUICK_EPOCHS, patience=4, progress=False))
    return out


@pytest.fixture(scope="session")
def quantized_bundle_session(session_dir, trained_bundle_session) -> Path:
    """The trained bundle after `quantize`: int8 edge model + calibrated routing. Do not modify: copy it."""
    from quantize.pipeline import quantize_bundle

    out = session_dir / "quantized"
    shutil.copytree(trained_bundle_session, out)
    quantize_bundle(out, progress=False)
    return out


@pytest.fixture
def trained_bundle(trained_bundle_session, tmp_path) -> Path:
    """A private copy of the trained bundle, free to modify."""
    dst = tmp_path / "bundle"
    shutil.copytree(trained_bundle_session, dst)
    return dst


@pytest.fixture
def quantized_bundle(quantized_bundle_session, tmp_path) -> Path:
    """A private copy of the quantized bundle, free to modify."""
    dst = tmp_path / "qbundle"
    shutil.copytree(quantized_bundle_session, dst)
    return dst
