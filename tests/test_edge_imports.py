"""The edge SDK runs on a device without TensorFlow, Keras, `cloud` or `quantize`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from edge_helpers import cached_tiny_bundle, tiny_images

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("tensorflow", "keras", "cloud", "quantize", "tf_keras", "jax", "torch")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)


def test_importing_the_sdk_loads_none_of_the_heavy_packages():
    code = (
        "import sys, json\n"
        "import edge_sdk, edge_sdk.hybrid, edge_sdk.client, edge_sdk.runtime, edge_sdk.cli, edge_sdk.ota, "
        "edge_sdk.policy, edge_sdk.capacity, edge_sdk.breaker, edge_sdk.upload, edge_sdk.commands.predict\n"
        "from edge_sdk import HybridClassifier, Prediction\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_no_forbidden_import_anywhere_in_the_source():
    """Static check: only runtime.py may import tensorflow.lite, and only inside a function (last resort)."""
    bad = []
    for path in sorted((REPO / "edge_sdk").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                last_resort = path.name == "runtime.py" and n == "tensorflow.lite" and node.col_offset > 0
                if n.split(".")[0] in FORBIDDEN and not last_resort:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: import {n}")
    assert bad == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_bundle(tmp_path_factory, seed=0)


def test_predict_works_where_tensorflow_cannot_be_imported(tiny, tmp_path):
    """Simulate a device with only the `edge` extra: importing tensorflow/keras/cloud/quantize fails."""
    import cv2

    img = tmp_path / "x.png"
    cv2.imwrite(str(img), tiny_images(1)[0])
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {FORBIDDEN!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    code = blocker + (
        "from edge_sdk import HybridClassifier\n"
        f"clf = HybridClassifier.from_bundle({str(tiny)!r}, mode='edge_only')\n"
        f"p = clf.predict({str(img)!r})\n"
        "print('API', clf.model.backend, p.source, p.label)\n"
        "from edge_sdk.cli import main\n"
        f"rc = main(['predict', {str(tiny)!r}, {str(img)!r}, '--mode', 'edge_only'])\n"
        "print('RC', rc)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    api = next(ln for ln in lines if ln.startswith("API")).split()
    assert api[1:3] == ["ai_edge_litert", "edge"]
    row = next(ln for ln in lines if ln.startswith(str(img))).split("\t")
    assert row[1] == api[3] and row[3:] == ["edge", "edge_only"]
    assert "RC 0" in lines
