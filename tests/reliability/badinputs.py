"""A generated corpus of bad (and borderline) inputs for the service, each with the status the design documents.

Images go to every input endpoint: raw to ``POST /v1/classify`` and base64 in a
BYTES tensor to ``POST /v2/models/{name}/infer``. JSON and tensor cases go to
infer; transport cases (size, Content-Type, query) to both. Statuses follow
docs/design: 400 malformed, 404 unknown model, 413 too large, 415 unsupported
media type, 422 undecodable image or wrong shape/values; a valid but odd image
(1x1, 16-bit, CMYK, grey, RGBA, extreme aspect ratio) is 200.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image


@dataclass
class Case:
    kind: str
    method: str
    path: str  # relative to the base URL; {model} is filled in
    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_declaring(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header declares width x height (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 256)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _cv(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok, ext
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def images() -> dict[str, tuple[bytes, int]]:
    """name -> (encoded bytes, documented status)."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    jpeg = _cv(".jpg", photo)
    png = _cv(".png", photo)
    gif_frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    flipped = bytearray(png)
    flipped[60:80] = bytes(20)  # IDAT data zeroed: the CRC and the deflate stream no longer check out
    bmp = _cv(".bmp", photo)
    return {
        # refused
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], 422),
        "jpeg_headers_only": (jpeg[: jpeg.find(b"\xff\xda")], 422),
        "zero_bytes": (b"", 422),
        "text_as_png": (b"this is a text file, not an image\n" * 4, 415),
        "svg_as_png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', 415),
        "png_declaring_30000x30000": (png_declaring(30_000, 30_000), 413),
        "bmp_declaring_60000x60000": (b"BM" + bytes(16) + struct.pack("<ii", 60_000, 60_000) + bytes(28), 413),
        "png_declaring_0x0": (png_declaring(0, 0), 422),
        "truncated_png": (png[: len(png) // 2], 422),
        "png_corrupt_idat": (bytes(flipped), 422),
        "png_signature_only": (b"\x89PNG\r\n\x1a\n", 422),
        "truncated_bmp": (bmp[:200], 422),
        "animated_gif": (_pil(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=50,
                              loop=0), 415),
        "tiff": (_cv(".tiff", photo), 415),
        "random_bytes": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), 415),
        # odd but valid: answered
        "png_1x1": (_cv(".png", photo[:1, :1]), 200),
        "png_16bit": (_cv(".png", (photo.astype(np.uint16) * 257)), 200),
        "jpeg_cmyk": (_pil(Image.new("CMYK", (20, 20), (0, 128, 255, 0)), "JPEG"), 200),
        "png_grey": (_cv(".png", photo[..., 0]), 200),
        "png_rgba": (_cv(".png", np.dstack([photo, photo[..., :1]])), 200),
        "png_4000x1": (_cv(".png", rng.integers(0, 256, (1, 4000, 3), dtype=np.uint8)), 200),
        "webp": (_cv(".webp", photo), 200),
    }


def _infer_json(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def tensor_cases(shape: tuple[int, int, int]) -> dict[str, tuple[bytes, int]]:
    """Infer request bodies (JSON) -> documented status. ``shape`` is the model's (H, W, C)."""
    h, w, c = shape
    n = h * w * c
    def tensor(datatype: str, data, shp) -> dict:
        return {"name": "image", "shape": list(shp), "datatype": datatype, "data": data}

    fp = lambda data, shp=(1, h, w, c): tensor("FP32", data, shp)  # noqa: E731
    u8 = lambda data, shp: tensor("UINT8", data, shp)  # noqa: E731
    by = lambda data, shp=(1,): tensor("BYTES", data, shp)  # noqa: E731
    zeros = ",".join(["0.0"] * (n - 1))

    def raw_fp32(first: str) -> bytes:
        """An FP32 request whose first value is written as raw JSON text (NaN, Infinity, 1e400)."""
        return ('{"inputs": [{"name": "image", "shape": [1, ' + f"{h}, {w}, {c}" + '], "datatype": "FP32", '
                '"data": [' + first + "," + zeros + "]}]}").encode()

    tiny_png = base64.b64encode(_cv(".png", np.zeros((2, 2, 3), np.uint8))).decode()
    nested = "[" * 5000 + "0" + "]" * 5000
    return {
        "malformed_json": (b'{"inputs": [{"name": "image", ', 400),
        "not_utf8": (b'{"inputs": "\xff\xfe\xfa"}', 400),
        "json_null": (b"null", 400),
        "json_array": (b"[1, 2, 3]", 400),
        "inputs_wrong_type": (_infer_json("image"), 400),
        "shape_wrong_type": (_infer_json([{"name": "image", "shape": "1x8x8", "datatype": "FP32", "data": []}]),
                             400),
        "unknown_datatype": (_infer_json([tensor("FLOAT", [1], [1])]), 400),
        "data_not_a_list": (_infer_json([by("abc")]), 400),
        "extra_tensor_field": (_infer_json([{**fp([0.0] * n), "surprise": 1}]), 400),  # tensors are strict
        # the protocol's clients may add top-level fields (kserve sends model_name): ignored
        "extra_top_level_field": (_infer_json([fp([0.0] * n)], model_name="x", surprise=1), 200),
        "two_inputs": (_infer_json([fp([0.0] * n), fp([0.0] * n)]), 400),
        "no_inputs": (_infer_json([]), 400),
        "id_too_long": (_infer_json([fp([0.0] * n)], id="x" * 300), 400),
        "nine_dims": (_infer_json([fp([0.0], [1] * 9)]), 400),
        "fp32_negative_dim": (_infer_json([fp([0.0] * n, (1, -h, w, c))]), 400),
        "uint8_negative_dim": (_infer_json([u8([0] * 12, (1, -2, 2, 3))]), 400),
        "bytes_negative_dim": (_infer_json([by([], [-1])]), 400),
        "unknown_input_name": (_infer_json([{**fp([0.0] * n), "name": "pixels"}]), 400),
        "unknown_output": (_infer_json([fp([0.0] * n)], outputs=[{"name": "logits"}]), 400),
        "bytes_not_base64": (_infer_json([by(["%%%not base64"])]), 400),
        "bytes_element_number": (_infer_json([by([12345])]), 400),
        "deeply_nested_data": (b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": '
                               + nested.encode() + b"}]}", 400),
        "fp32_nan": (raw_fp32("NaN"), 422),
        "fp32_inf": (raw_fp32("Infinity"), 422),
        "fp32_minus_inf": (raw_fp32("-Infinity"), 422),
        "fp32_overflow_1e400": (raw_fp32("1e400"), 422),
        "fp32_wrong_shape": (_infer_json([fp([0.0] * 12, (1, 2, 2, 3))]), 422),
        "fp32_too_few_values": (_infer_json([fp([0.0] * (n - 1))]), 422),
        "fp32_strings": (_infer_json([fp(["a"] * n)]), 422),
        "fp32_ragged": (_infer_json([fp([[0.0, 0.0], [0.0]] + [0.0] * (n - 3))]), 422),
        "fp32_empty_batch": (_infer_json([fp([], (0, h, w, c))]), 422),
        "fp32_batch_10000": (_infer_json([fp([], (10_000, h, w, c))]), 413),
        "uint8_out_of_range": (_infer_json([u8([300] * 12, (1, 2, 2, 3))]), 422),
        "uint8_negative": (_infer_json([u8([-1] * 12, (1, 2, 2, 3))]), 422),
        "uint8_huge_int": (('{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": ['
                            + str(10 ** 400) + ", 0, 0]}]}").encode(), 422),
        "uint8_floats": (_infer_json([u8([1.5] * 12, (1, 2, 2, 3))]), 422),
        "uint8_two_channels": (_infer_json([u8([1] * 8, (1, 2, 2, 2))]), 422),
        "uint8_zero_width": (_infer_json([u8([], (1, 2, 0, 3))]), 422),
        "uint8_declares_100000x100000": (_infer_json([u8([0], (1, 100_000, 100_000, 3))]), 413),
        "int32_datatype": (_infer_json([tensor("INT32", [1], [1])]), 422),
        "bytes_shape_2d": (_infer_json([by([tiny_png], [1, 1])]), 422),
        "bytes_count_mismatch": (_infer_json([by([tiny_png], [3])]), 422),
        "bytes_batch_10000": (_infer_json([by([tiny_png] * 10_000, [10_000])]), 413),
    }


def _bytes_infer(image: bytes) -> bytes:
    """An infer request carrying one encoded image."""
    encoded = base64.b64encode(image).decode()
    return _infer_json([{"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded]}])


def corpus(model: str, shape: tuple[int, int, int]) -> list[Case]:
    """Every case, each aimed at one endpoint. Statuses as documented; none may be a 500."""
    infer, classify = f"/v2/models/{model}/infer", "/v1/classify"
    J, PNG = {"Content-Type": "application/json"}, {"Content-Type": "image/png"}
    cases: list[Case] = []
    for name, (data, status) in images().items():
        ctype = "image/jpeg" if "jpeg" in name else "image/png"  # the text and svg cases are labelled PNG on purpose
        cases.append(Case(f"image:{name}", "POST", classify, status, data, {"Content-Type": ctype}))
        body = _bytes_infer(data)
        cases.append(Case(f"image:{name}", "POST", infer, status, body, J))
    for name, (body, status) in tensor_cases(shape).items():
        cases.append(Case(f"json:{name}", "POST", infer, status, body, J))
    ok_png = images()["png_1x1"][0]
    ok_infer = _bytes_infer(ok_png)
    huge = b"\0" * (33 * 1024 * 1024)  # over the default 32 MiB body limit
    cases += [
        Case("transport:huge_body", "POST", classify, 413, huge, PNG),
        Case("transport:huge_body", "POST", infer, 413, huge, J),
        Case("transport:wrong_content_type_text", "POST", classify, 415, ok_png, {"Content-Type": "text/plain"}),
        Case("transport:wrong_content_type_json", "POST", classify, 415, ok_png, J),
        Case("transport:no_content_type", "POST", classify, 415, ok_png, {}),
        Case("transport:wrong_content_type_xml", "POST", infer, 415, ok_infer, {"Content-Type": "text/xml"}),
        Case("transport:image_to_infer", "POST", infer, 415, ok_png, PNG),
        Case("transport:form_to_infer", "POST", infer, 415, b"a=1",
             {"Content-Type": "application/x-www-form-urlencoded"}),
        Case("transport:unknown_model", "POST", "/v2/models/no-such-model/infer", 404, ok_infer, J),
        Case("transport:unknown_model", "POST", classify + "?model=no-such-model", 404, ok_png, PNG),
        Case("transport:traversal_model_name", "POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", 404, ok_infer, J),
        Case("transport:top_k_not_a_number", "POST", classify + "?top_k=many", 400, ok_png, PNG),
        Case("transport:top_k_zero", "POST", classify + "?top_k=0", 400, ok_png, PNG),
        Case("transport:top_k_huge", "POST", classify + "?top_k=99999999999999999999", 400, ok_png, PNG),
        Case("transport:get_on_infer", "GET", infer, 405),
        Case("transport:put_on_classify", "PUT", classify, 405, ok_png, PNG),
        Case("transport:edge_bad_part", "GET", f"/v1/models/{model}/edge?part=weights", 400),
        Case("transport:ok_control_classify", "POST", classify, 200, ok_png, PNG),
        Case("transport:ok_control_infer", "POST", infer, 200, ok_infer, J),
    ]
    return cases
