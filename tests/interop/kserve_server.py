"""A real KServe ``ModelServer`` serving a hybrid-vision bundle's cloud model; runs in the side environment.

    python tests/interop/kserve_server.py BUNDLE_DIR [NAME]

The model is ``cloud.keras`` loaded by Keras 3 on the JAX backend (TensorFlow cannot live beside kserve's
protobuf), with ``safe_mode``. It takes what the SDK sends with ``upload="tensor"``: one input ``image``, UINT8
pixels at the model's size (grey for a one-channel model), or FP32 already preprocessed, and normalises as the
bundle's manifest says (``x = pixel * scale - mean) / std``, in float32 as edge_sdk.preprocess does). It answers
``probabilities`` FP32 [N, C]. This is what a user deploying a bundle on KServe would write.

The ModelServer binds the port the OS picks (port 0), on loopback only, and logs "Uvicorn running on ...",
which the test reads to find it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import kserve  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402


class BundleModel(kserve.Model):
    def __init__(self, name: str, bundle: Path):
        super().__init__(name)
        self.bundle = bundle
        self.load()

    def load(self) -> bool:
        manifest = json.loads((self.bundle / "manifest.json").read_text())
        inp, pp = manifest["input"], manifest["preprocess"]
        self.shape = (inp["height"], inp["width"], inp["channels"])
        self.scale = np.float32(pp["scale"])
        self.mean = np.asarray(pp["mean"], np.float32)
        self.std = np.asarray(pp["std"], np.float32)
        self.model = keras.saving.load_model(self.bundle / manifest["models"]["cloud"]["file"], safe_mode=True)
        self.ready = True
        return self.ready

    def _tensor(self, request: InferRequest) -> np.ndarray:
        t = request.inputs[0]
        x = t.as_numpy()
        if tuple(x.shape[1:]) != self.shape:
            raise InvalidInput(f"input must be [N, {', '.join(map(str, self.shape))}], not {list(x.shape)}")
        if t.datatype == "FP32":
            return x.astype(np.float32)
        if t.datatype != "UINT8":
            raise InvalidInput(f"send UINT8 pixels or FP32, not {t.datatype}")
        x = x.astype(np.float32) * self.scale
        if self.mean.any():
            x -= self.mean
        if (self.std != 1).any():
            x /= self.std
        return x

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        probs = np.asarray(self.model(self._tensor(payload), training=False), np.float32)
        out = InferOutput(name="probabilities", shape=list(probs.shape), datatype="FP32")
        out.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


def _loopback_config(config: type, *args, **kw):
    kw["host"] = "127.0.0.1"
    return config(*args, **kw)


def main() -> None:
    bundle = Path(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else json.loads((bundle / "manifest.json").read_text())["name"]
    # kserve hard-codes host 0.0.0.0; tests listen on loopback only, so the one setting it gives no way to pass
    # is fixed here. Everything else is kserve's own ModelServer.
    uvicorn.Config = functools.partial(_loopback_config, uvicorn.Config)  # type: ignore[misc]
    kserve.ModelServer(http_port=0, enable_grpc=False, workers=1).start([BundleModel(name, bundle)])


if __name__ == "__main__":
    main()
