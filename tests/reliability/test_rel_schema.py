"""Schema fuzzing: schemathesis generates requests from the live service's /openapi.json.

It runs the ``st`` CLI in a subprocess (bounded: a fixed number of examples per
operation, a fixed seed, one worker) against the in-process service with a
valid key, and requires: no 5xx, every response matching the schema and status
codes the document declares, and schema-invalid requests refused with a 4xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rel_helpers import KEY

pytestmark = pytest.mark.reliability

CHECKS = ("not_a_server_error", "response_schema_conformance", "status_code_conformance",
          "content_type_conformance", "negative_data_rejection")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    model = next(iter(server.app.state.hv.models))
    config = tmp_path / "schemathesis.toml"
    # a served model and its version, so requests get past the 404
    config.write_text(f'[parameters]\n"path.name" = "{model}"\n"path.version" = "1"\n')
    report = tmp_path / "report.json"
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(config), "run", f"{server.url}/openapi.json",
           "--checks", ",".join(CHECKS), "--max-examples", "40", "--seed", "7", "--workers", "1",
           "--header", f"Authorization: Bearer {KEY}", "--no-color", "--request-timeout", "20",
           "--generation-database", "none", "--report", "json", "--report-json-path", str(report)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(report.read_text())
    print(f"\nschemathesis: {doc['test_cases']['generated']} requests over {doc['operations']['tested']} operations "
          f"in {doc['running_time']:.1f}s, failures {doc['failures']}, errors {len(doc['errors'])}")
    assert out.returncode == 0 and doc["failures"] == [] and doc["errors"] == [], out.stdout[-6000:]
    assert doc["operations"]["tested"] == doc["operations"]["total"] >= 6
    assert doc["test_cases"]["generated"] >= 200
    assert server.app.state.hv.metrics.internal_errors._value.get() == 0
