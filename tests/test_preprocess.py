"""The one preprocessing path: every accepted input kind agrees, every refused one says why."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_sdk.errors import InvalidImageError
from edge_sdk.imageinfo import read_info
from edge_sdk.preprocess import (
    ImageLimits,
    InputSpec,
    PreprocessSpec,
    QuantParams,
    dequantize,
    load_image,
    preprocess,
    quantize,
    resize,
)

RGB_SPEC = InputSpec(height=24, width=24, channels=3, color="RGB")
GRAY_SPEC = InputSpec(height=16, width=16, channels=1, color="GRAY")
PP = PreprocessSpec(resize="stretch", scale=1 / 255.0)

images = arrays(np.uint8, st.tuples(st.integers(1, 48), st.integers(1, 48), st.just(3)))
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def png_bytes(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


@fast
@given(img=images, mode=st.sampled_from(["stretch", "letterbox", "center_crop"]))
def test_path_bytes_and_array_give_identical_tensors(tmp_path, img, mode):
    pp = PreprocessSpec(resize=mode, scale=1 / 255.0)
    data = png_bytes(img)  # img is BGR, as OpenCV gives
    path = tmp_path / "x.png"
    path.write_bytes(data)
    from_path = preprocess(path, RGB_SPEC, pp)
    from_str = preprocess(str(path), RGB_SPEC, pp)
    from_bytes = preprocess(data, RGB_SPEC, pp)
    from_array = preprocess(img, RGB_SPEC, pp)  # default color="bgr"
    assert from_path.shape == (24, 24, 3) and from_path.dtype == np.float32
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_str)
    np.testing.assert_array_equal(from_path, from_array)


@fast
@given(img=images)
def test_bgr_and_rgb_declared_inputs(img):
    bgr_result = preprocess(img, RGB_SPEC, PP, color="bgr")
    rgb_result = preprocess(img[..., ::-1].copy(), RGB_SPEC, PP, color="rgb")
    np.testing.assert_array_equal(bgr_result, rgb_result)
    # The decoded RGB of a BGR array is the array reversed along channels.
    np.testing.assert_array_equal(load_image(img), img[..., ::-1])
    np.testing.assert_array_equal(load_image(img, color="rgb"), img)


def test_pure_red_bgr_frame_becomes_red_rgb():
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    x = preprocess(bgr, RGB_SPEC, PP)
    assert np.allclose(x[..., 0], 1.0) and np.allclose(x[..., 1:], 0.0)


@fast
@given(img=arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_grey_and_alpha_inputs(img):
    grey = preprocess(img, GRAY_SPEC, PP)
    as_rgb = preprocess(np.repeat(img[..., None], 3, axis=2), GRAY_SPEC, PP)
    np.testing.assert_array_equal(grey, as_rgb)
    bgra = np.dstack([img, img, img, np.full_like(img, 7)])
    np.testing.assert_array_equal(preprocess(bgra, GRAY_SPEC, PP), grey)
    assert preprocess(img[..., None], GRAY_SPEC, PP).shape == (16, 16, 1)


@pytest.mark.parametrize(
    "bad, words",
    [
        (b"", "0 bytes"),
        (b"hello, I am text", "not a recognised image format"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "gif is not supported"),
        (np.zeros((4, 4), np.float32), "dtype is float32"),
        (np.zeros((4, 4, 2), np.uint8), "shape (4, 4, 2)"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((2, 2, 2, 3), np.uint8), "shape (2, 2, 2, 3)"),
        (12345, "unsupported input type int"),
        ("/nonexistent/file.png", "no such file"),
    ],
)
def test_refused_inputs_say_what_was_wrong(bad, words):
    with pytest.raises(InvalidImageError) as ei:
        preprocess(bad, RGB_SPEC, PP)
    assert words in str(ei.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(InvalidImageError, match="directory|regular file"):
        load_image(tmp_path)


def test_bad_color_argument():
    with pytest.raises(InvalidImageError, match="color must be"):
        load_image(np.zeros((2, 2, 3), np.uint8), color="hsv")


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_header_before_decode():
    bomb = _png_declaring(30000, 30000)
    assert len(bomb) < 200
    assert read_info(bomb).width == 30000
    with pytest.raises(InvalidImageError) as ei:
        preprocess(bomb, RGB_SPEC, PP)
    assert ei.value.kind == "too_large" and "900000000 pixels" in str(ei.value)


def test_byte_limit_checked_before_decode(tmp_path):
    data = png_bytes(np.zeros((64, 64, 3), np.uint8))
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(InvalidImageError, match="over the limit") as ei:
        load_image(data, limits=limits)
    assert ei.value.kind == "too_large"
    p = tmp_path / "a.png"
    p.write_bytes(data)
    with pytest.raises(InvalidImageError, match="over the limit"):
        load_image(p, limits=limits)


def test_array_pixel_limit():
    with pytest.raises(InvalidImageError, match="pixels, over the limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), limits=ImageLimits(max_pixels=9999))


def test_truncated_jpeg_is_refused():
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    assert load_image(data).shape == (64, 64, 3)
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_truncated_png_is_refused():
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp"])
def test_each_accepted_format_decodes_and_header_size_matches(ext):
    img = np.random.default_rng(1).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    info = read_info(buf.tobytes())
    assert (info.width, info.height) == (53, 37)
    assert load_image(buf.tobytes()).shape == (37, 53, 3)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
def test_resize_modes_shape_and_content(mode):
    img = np.full((20, 40, 3), 200, np.uint8)
    out = resize(img, 10, 10, mode)
    assert out.shape == (10, 10, 3)
    if mode == "letterbox":  # wide image: padded rows top and bottom
        assert out[0].max() == 0 and out[5].min() == 200
    else:
        assert out.min() == 200


def test_normalisation_mean_std():
    pp = PreprocessSpec(scale=1 / 255.0, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    x = preprocess(np.full((8, 8, 3), 255, np.uint8), RGB_SPEC, pp)
    assert np.allclose(x, 1.0)


@fast
@given(x=arrays(np.float32, 20, elements=st.floats(-3, 3, width=32)),
       scale=st.floats(0.001, 0.1), zp=st.integers(-128, 127), dtype=st.sampled_from(["int8", "uint8"]))
def test_quantize_roundtrip_within_half_a_step(x, scale, zp, dtype):
    if dtype == "uint8":
        zp = zp + 128
    q = QuantParams(scale=scale, zero_point=zp, dtype=dtype)
    v = quantize(x, q)
    assert v.dtype == np.dtype(dtype)
    back = dequantize(v, q)
    info = np.iinfo(dtype)
    lo, hi = (info.min - zp) * scale, (info.max - zp) * scale
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(back[inside] - x[inside]) <= scale / 2 + 1e-6)


def test_int8_path_equals_quantized_float_path():
    q = QuantParams(scale=1 / 255.0, zero_point=-128, dtype="int8")
    img = np.random.default_rng(2).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    direct = preprocess(img, RGB_SPEC, PP, quant=q)
    np.testing.assert_array_equal(direct, quantize(preprocess(img, RGB_SPEC, PP), q))
    assert direct.dtype == np.int8
