"""A small anchor-free detector: CenterNet heads on a MobileNetV2-style backbone with a light FPN.

Zhou, Wang and Krähenbühl 2019, "Objects as Points" (CenterNet): every object is
the peak of a per-class centre heatmap; the same output cell regresses the box
size and the sub-cell offset of the centre. Backbone: the inverted residual
blocks of Sandler et al. 2018 (MobileNetV2), as ``quantize.models`` builds them,
down to stride 16 (and 32 for the bigger cloud model); the neck adds upsampled
deep features to lateral 1x1 projections at strides 8 and 4 (Lin et al. 2017,
FPN), so the heads see stride-4 cells with deep context.

Three outputs, each with its own int8 scale after conversion:

* ``heatmap`` [N, H/4, W/4, classes]: sigmoid centre scores;
* ``size``    [N, H/4, W/4, 2]: box width and height in output cells (ReLU);
* ``offset``  [N, H/4, W/4, 2]: the centre's position inside its cell, 0..1 (sigmoid).

Every op (conv, depthwise conv, ReLU6, add, nearest upsampling, sigmoid) has an
int8 TFLite kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models import _inverted_residual, _make_divisible

STRIDE = 4
OUTPUTS = ("heatmap", "size", "offset")
HEAT_PRIOR = 0.01  # initial centre probability everywhere (focal-loss prior, Lin et al. 2017)


@dataclass(frozen=True)
class DetectorSpec:
    """``width`` scales every channel count; ``deep`` adds a stride-32 stage (for larger inputs or objects)."""

    width: float = 0.5
    neck: int = 48
    head: int = 64
    expansion: int = 4
    deep: bool = False

    @property
    def name(self) -> str:
        return f"centernet_mnv2_w{self.width:g}_n{self.neck}{'_deep' if self.deep else ''}"


EDGE_SPEC = DetectorSpec(width=0.5, neck=48, head=64, expansion=4)
CLOUD_SPEC = DetectorSpec(width=1.0, neck=96, head=128, expansion=4, deep=True)


def _conv_bn(x, filters: int, kernel: int = 1, stride: int = 1, name: str | None = None):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU(6.0)(x)


def _backbone(x, spec: DetectorSpec):
    """Two plain strided convs down to stride 4, then inverted residual stages; the features at strides 4, 8, 16
    (and 32 when ``deep``).

    The plain stem replaces MobileNetV2's expanded blocks at stride 2: at 160x160
    they cost most of a training step on a CPU for little accuracy (measured: the
    whole detector trains 3.4x faster per image this way).
    """
    t = spec.expansion
    cfg = [(t, 64, 2, 2), (t, 128, 3, 2), (t, 192, 2, 1)] + ([(t, 256, 2, 2)] if spec.deep else [])
    x = _conv_bn(x, _make_divisible(32 * spec.width), 3, 2)
    x = _conv_bn(x, _make_divisible(48 * spec.width), 3, 2)
    feats = [x]
    for i, (e, c, n, s) in enumerate(cfg):
        out_c = _make_divisible(c * spec.width)
        for j in range(n):
            x = _inverted_residual(x, e, out_c, s if j == 0 else 1)
        if i != 1:  # stage 1 (stride 16) is followed by stage 2 at the same stride
            feats.append(x)
    return feats


def _head(x, outputs: int, name: str, activation: str, bias: float = 0.0):
    import keras
    from keras import layers

    y = layers.Conv2D(outputs, 1, bias_initializer=keras.initializers.Constant(bias))(x)
    return layers.Activation(activation, name=name)(y)


def build_detector(input_shape: tuple[int, int, int], num_classes: int, spec: DetectorSpec = EDGE_SPEC):
    """The inference model: one image input, the three named outputs of the module docstring."""
    import keras
    from keras import layers

    h, w = input_shape[:2]
    if h % 32 or w % 32:
        raise ValueError(f"detector input sides must be multiples of 32, not {h}x{w}")
    inp = keras.Input(input_shape, name="image")
    *laterals, deepest = _backbone(inp, spec)
    n = spec.neck
    p = _conv_bn(deepest, n)
    for lateral in reversed(laterals):
        p = layers.UpSampling2D(2, interpolation="nearest")(p)
        p = layers.Add()([p, _conv_bn(lateral, n)])
    p = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(p)
    p = layers.BatchNormalization(momentum=0.9)(p)
    p = layers.ReLU(6.0)(p)
    p = _conv_bn(p, spec.head)  # one trunk shared by the three heads
    prior = -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)
    outs = [_head(p, num_classes, "heatmap", "sigmoid", prior), _head(p, 2, "size", "relu"),
            _head(p, 2, "offset", "sigmoid")]
    return keras.Model(inp, outs, name=spec.name)


def training_model(detector):
    """The detector with its outputs concatenated on the channel axis: one tensor for one loss."""
    import keras
    from keras import layers

    return keras.Model(detector.inputs, layers.Concatenate(name="all")(list(detector.outputs)), name="train_wrapper")
