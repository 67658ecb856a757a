"""What the SDK uploads for an image (edge_sdk.upload): the default sends the caller's file when it is small for
the model's input, else a lossless copy of the resized pixels, else (large inputs) a high-quality JPEG."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_sdk.preprocess import decode_bytes, encode_jpeg, resize
from edge_sdk.upload import AUTO_JPEG_QUALITY, LOSSLESS_MAX_PIXELS, Staged, auto_bytes, build_request, original_budget


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (a photo compresses; noise would not)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _staged(src, rgb: np.ndarray, size: int) -> Staged:
    return Staged(src, rgb, resize(rgb, size, size, "stretch"))


def _sent(payload) -> bytes:
    values = payload.inputs[0].values
    assert isinstance(values, tuple)  # encoded images (BYTES)
    return values[0]


def test_a_small_file_goes_as_it_is(tmp_path):
    rgb = _photo(32, 32)
    path = tmp_path / "a.jpg"
    path.write_bytes(encode_jpeg(rgb, 75))
    assert path.stat().st_size <= original_budget(rgb, 3)
    s = _staged(str(path), decode_bytes(path.read_bytes()), 32)
    assert _sent(build_request([s], "auto")) == path.read_bytes()
    assert auto_bytes(_staged(path.read_bytes(), s.rgb, 32)) == path.read_bytes()  # encoded bytes alike


def test_a_big_file_or_an_array_goes_resized_and_lossless(tmp_path):
    rgb = _photo(480, 640)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    for src in (str(path), rgb):
        s = _staged(src, rgb, 32)
        sent = _sent(build_request([s], "auto"))
        assert sent[:4] == b"RIFF" and sent[8:12] == b"WEBP"
        assert np.array_equal(decode_bytes(sent), s.resized)  # exactly the edge's pixels


def test_large_model_inputs_get_a_high_quality_jpeg():
    side = int(np.sqrt(LOSSLESS_MAX_PIXELS)) * 2
    s = _staged(_photo(side * 2, side * 2), _photo(side * 2, side * 2), side)
    sent = auto_bytes(s)
    assert sent[:3] == b"\xff\xd8\xff" and sent == encode_jpeg(s.resized, AUTO_JPEG_QUALITY)


def test_lossless_is_exact_and_jpeg_is_not():
    s = _staged(_photo(32, 32, 1), _photo(32, 32, 1), 32)
    assert np.array_equal(decode_bytes(_sent(build_request([s], "lossless"))), s.resized)
    assert not np.array_equal(decode_bytes(_sent(build_request([s], "jpeg"))), s.resized)


def test_unknown_upload_is_refused():
    s = _staged(_photo(8, 8), _photo(8, 8), 8)
    with pytest.raises(ValueError, match="upload"):
        build_request([s], "gif")
