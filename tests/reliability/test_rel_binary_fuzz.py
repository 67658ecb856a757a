"""The binary tensor data fuzz at scale, over HTTP against the keyed service: no 5xx, and it stays ready.

``HV_FUZZ_HTTP_CASES`` sets the count (default 2,000, about 15 s on 2 idle cores); the default run's
test_cloud_binary.py sends 300 over HTTP and 10,000 through the parser in process.
"""

from __future__ import annotations

import os
import time

import pytest
from binary_fuzz import fuzz_over_http
from rel_helpers import AUTH

pytestmark = pytest.mark.reliability

CASES = int(os.environ.get("HV_FUZZ_HTTP_CASES", "2000"))


def test_binary_fuzz_over_http_no_5xx_and_still_ready(server):
    t = time.perf_counter()
    statuses = fuzz_over_http(server, CASES, seed=int(os.environ.get("HV_FUZZ_SEED", "11")), headers=AUTH)
    took = time.perf_counter() - t
    print(f"\nbinary fuzz over HTTP: {CASES} cases in {took:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) == CASES and statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0
