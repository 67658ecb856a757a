"""Property fuzzing: hostile bytes into preprocessing, hostile JSON into the protocol on both sides.

The properties are the contracts the rest of the product relies on:

* ``edge_sdk.preprocess``: any bytes give a valid tensor or ``InvalidImageError``,
  and a decoded image never has more pixels than its header declared (the
  pixel limit is checked from the header, so the two must agree).
* ``edge_sdk.protocol.parse_outputs`` (the SDK reading a server's answer): any
  JSON gives probabilities of the right shape or a ``ValueError``.
* ``cloud.inputs.parse_infer`` (the service reading a request): any body gives
  a finite float32 batch of the model's shape or an ``ApiError`` with a 4xx.
"""

from __future__ import annotations

import base64
import json
import struct

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloud.errors import ApiError
from cloud.inputs import ModelInput, parse_infer
from edge_sdk.errors import InvalidImageError
from edge_sdk.imageinfo import read_info
from edge_sdk.preprocess import ImageLimits, InputSpec, PreprocessSpec, decode_bytes, preprocess
from edge_sdk.protocol import parse_outputs

pytestmark = pytest.mark.reliability

fuzz = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPEC = InputSpec(height=16, width=16, channels=1, color="GRAY")
PP = PreprocessSpec(resize="letterbox", scale=1 / 255.0)
LIMITS = ImageLimits(max_bytes=256 * 1024, max_pixels=96 * 96)


def _encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


_rng = np.random.default_rng(3)
_img = _rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
SEEDS = [_encode(e, _img) for e in (".png", ".jpg", ".bmp", ".webp")] + [_encode(".png", _img[..., 0])]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid PNG/JPEG/BMP/WebP with random damage: flipped bytes, cuts, insertions, splices."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "splice", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "set":  # header fields are where lies hurt: overwrite a run with extreme values
            extremes = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff"]
            data[i:i + 4] = draw(st.sampled_from(extremes))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[i:] = other[draw(st.integers(0, len(other) - 1)):]
        else:
            data[i:i] = data[i:i + draw(st.integers(1, 512))]
    return bytes(data)


def check_decoded(data: bytes) -> None:
    try:
        rgb = decode_bytes(data, LIMITS)
    except InvalidImageError as e:
        assert e.kind in ("invalid", "unsupported", "too_large") and str(e)
        return
    info = read_info(data)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] * rgb.shape[1] <= LIMITS.max_pixels
    assert (rgb.shape[1], rgb.shape[0]) == (info.width, info.height), "the decoder and the header reader disagree"
    x = preprocess(data, SPEC, PP, limits=LIMITS)
    assert x.shape == (16, 16, 1) and x.dtype == np.float32 and np.isfinite(x).all()


def header_lies() -> dict[str, bytes]:
    """Files whose size header says less than their pixel data: the pre-decode pixel check must not be fooled."""
    big = np.random.default_rng(4).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # 160,000 px > LIMITS
    jpeg = _encode(".jpg", big)
    sof = jpeg.find(b"\xff\xc0")
    small_sof = b"\xff\xc1" + struct.pack(">HBHHB", 11, 8, 10, 10, 1) + b"\x01\x11\x00"  # declares 10x10 first
    ok, webp = cv2.imencode(".webp", big, [cv2.IMWRITE_WEBP_QUALITY, 80])
    frame = webp.tobytes()[12:]  # the VP8 chunk (400x400)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (9).to_bytes(3, "little") * 2  # canvas 10x10
    riff = b"WEBP" + vp8x + frame
    png = bytearray(_encode(".png", big))
    png[16:24] = struct.pack(">II", 10, 10)  # IHDR says 10x10 over 400x400 data (CRC now wrong too)
    return {"jpeg_two_sofs": jpeg[:sof] + small_sof + jpeg[sof:],
            "webp_small_canvas": b"RIFF" + struct.pack("<I", len(riff)) + riff,
            "png_small_ihdr": bytes(png)}


@pytest.mark.parametrize("name", list(header_lies()))
def test_a_lying_size_header_never_yields_more_pixels_than_it_declared(name):
    check_decoded(header_lies()[name])


@fuzz
@given(data=st.binary(max_size=2048))
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"\xff\xd8\xff")
@example(data=b"RIFF\x00\x00\x00\x00WEBPVP8X")
@example(data=b"BM")
def test_random_bytes_decode_or_raise_invalid_image(data):
    check_decoded(data)


@fuzz
@given(data=mutated_images())
def test_damaged_images_decode_or_raise_invalid_image(data):
    check_decoded(data)


@fuzz
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
       dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.bool_, np.uint16]),
       color=st.sampled_from(["bgr", "rgb", "BGR", "hsv"]))
def test_arrays_of_any_shape_and_dtype_preprocess_or_raise(shape, dtype, color):
    a = np.zeros(shape, dtype)
    try:
        x = preprocess(a, SPEC, PP, color=color, limits=LIMITS)
    except InvalidImageError:
        return
    assert x.shape == (16, 16, 1) and np.isfinite(x).all()


# --- the protocol ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=30,
)


@st.composite
def near_valid_responses(draw, n: int = 2, c: int = 3) -> dict:
    """An infer response with each part either right or replaced by something hostile."""
    probs = np.full((n, c), 1.0 / c).ravel().tolist()
    pick = lambda good: draw(st.one_of(st.just(good), json_values))  # noqa: E731
    tensor = {
        "name": pick("probabilities"), "datatype": pick("FP32"),
        "shape": pick([n, c]),
        "data": draw(st.one_of(st.just(probs), st.lists(json_values, min_size=n * c, max_size=n * c),
                               st.lists(st.floats(), min_size=n * c, max_size=n * c))),
    }
    label = {"name": "label", "datatype": "BYTES", "shape": pick([n]), "data": pick(["a"] * n)}
    outputs = draw(st.one_of(st.just([tensor, label]), st.just([tensor]), st.lists(json_values, max_size=3)))
    extra = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2))
    return {"model_name": pick("m"), "outputs": outputs, **extra}


def check_outputs(body) -> None:
    try:
        probs, labels = parse_outputs(body, 2, 3)
    except ValueError:  # pydantic's ValidationError is one
        return
    assert probs.shape == (2, 3) and probs.dtype == np.float32 and np.isfinite(probs).all()
    assert labels is None or (len(labels) == 2 and all(isinstance(x, str) for x in labels))


@fuzz
@given(body=json_values)
def test_parse_outputs_on_any_json(body):
    check_outputs(body)


@fuzz
@given(body=near_valid_responses())
@example(body={"model_name": "m", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
                                                "data": [{}, 0, 0, 0, 0, 0]}]})
def test_parse_outputs_on_near_valid_responses(body):
    check_outputs(body)


MODEL_INPUT = ModelInput(SPEC, PP, LIMITS, max_images=8)


@st.composite
def near_valid_requests(draw) -> dict:
    dt = draw(st.sampled_from(["FP32", "UINT8", "BYTES", "INT8", "FP64"]))
    if dt == "BYTES":
        good_shape, good_data = [1], [base64.b64encode(SEEDS[0]).decode()]
    elif dt == "UINT8":
        good_shape, good_data = [1, 3, 2, 3], [7] * 18
    else:
        good_shape, good_data = [1, 16, 16, 1], [0.5] * 256
    shape = draw(st.one_of(st.just(good_shape), st.lists(st.integers(-3, 300), min_size=1, max_size=5)))
    data = draw(st.one_of(st.just(good_data), st.lists(json_values, max_size=20),
                          st.lists(st.one_of(st.integers(-300, 300), st.floats()), min_size=len(good_data),
                                   max_size=len(good_data))))
    tensor = {"name": draw(st.sampled_from(["image", "image", "x"])), "shape": shape, "datatype": dt, "data": data}
    doc = {"inputs": [tensor]}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": draw(st.sampled_from(["probabilities", "label", "logits"]))}]
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    return doc


def check_request(body: bytes) -> None:
    try:
        parsed = parse_infer(body, MODEL_INPUT)
    except ApiError as e:
        assert 400 <= e.status < 500 and e.message
        return
    x = parsed.x
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (16, 16, 1) and 1 <= len(x) <= 8
    assert np.isfinite(x).all()


@fuzz
@given(doc=json_values)
def test_parse_infer_on_any_json(doc):
    check_request(json.dumps(doc).encode())


@fuzz
@given(doc=near_valid_requests())
def test_parse_infer_on_near_valid_requests(doc):
    check_request(json.dumps(doc).encode())


@fuzz
@given(body=st.binary(max_size=512))
def test_parse_infer_on_any_bytes(body):
    check_request(body)
