"""Fixtures of the reliability suite: one keyed service on loopback and digit images.

Every test module here sets ``pytestmark = pytest.mark.reliability``
(``pytest -m reliability`` runs just them; ``make test`` and CI run them with the rest).
"""

from __future__ import annotations

import pytest
from cloud_server import serve_app_in_thread
from rel_helpers import KEY


@pytest.fixture(scope="session")
def server(quantized_bundle_session):
    """The real service (the digits bundle under its manifest name, API keys on) in a background thread."""
    with serve_app_in_thread([quantized_bundle_session], api_keys=[KEY], max_delay_ms=2) as s:
        yield s


@pytest.fixture(scope="session")
def digit_pngs(digits_dir) -> list[tuple[bytes, str]]:
    """Two PNGs of each digit: (encoded bytes, true label)."""
    return [(p.read_bytes(), d.name) for d in sorted(digits_dir.iterdir()) if d.is_dir()
            for p in sorted(d.glob("*.png"))[:2]]
