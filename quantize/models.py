"""The architectures `train` offers, each with a width multiplier.

- ``resnet``: ResNet-9 (D. Page 2018, "How to train your ResNet", the DAWNBench
  CIFAR-10 winner; widths 64-128-256-512 times ``width``): the default for photos.
- ``resnet_edge``: the same shape with the last stage no wider than the third
  (widths 16-32-64-64 times ``width``), which spends the int8 size budget on
  the early layers: the default little model for big/little.
- ``cnn``: conv-conv-pool twice and a dense head: the default for digits and
  other small grey shapes.
- ``mobilenetv2``: inverted residual blocks (Sandler et al. 2018).

Builders return a model that outputs logits (what training wants);
:func:`with_softmax` turns it into the bundle's model, which outputs
probabilities, optionally averaged over the image and its mirror image.
All use only ops that convert to full-integer int8.
"""

from __future__ import annotations

import numpy as np

ARCHS = ("resnet", "resnet_edge", "cnn", "mobilenetv2")


def load_safe(path, error_cls: type[Exception], what: str = "the Keras model"):
    """Load a .keras file with safe_mode (no arbitrary code); any failure becomes ``error_cls`` naming the file."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises ValueError/TypeError/OSError/zip errors for bad or unsafe files
        raise error_cls(f"{path}: cannot load {what} ({type(e).__name__}: {str(e)[:300]})") from None


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
    """A logits model of the named architecture."""
    if arch == "resnet":
        return resnet(input_shape, num_classes, (64, 128, 256, 512), width, name=f"resnet_w{width:g}")
    if arch == "resnet_edge":
        return resnet(input_shape, num_classes, (16, 32, 64, 64), width, name=f"resnet_edge_w{width:g}")
    if arch == "cnn":
        return classic_cnn(input_shape, num_classes, width)
    if arch == "mobilenetv2":
        return mobilenet_v2_style(input_shape, num_classes, width)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def with_softmax(logits_model, flip_average: bool = False):
    """The bundle's model: probabilities out; with ``flip_average`` the logits of the image and its mirror are averaged.

    The mirror is a fixed permutation (a frozen Dense over the width axis), so the
    file holds only built-in layers and loads with ``safe_mode``.
    """
    import keras
    from keras import layers

    inp = keras.Input(logits_model.input_shape[1:], name="image")
    logits = logits_model(inp)
    if flip_average:
        logits = layers.Average(name="flip_average")([logits, logits_model(mirror(inp))])
    out = layers.Softmax(name="probabilities")(logits)
    return keras.Model(inp, out, name=logits_model.name)


def mirror(x):
    """Flip an NHWC tensor left-right with built-in layers only."""
    from keras import layers

    w = int(x.shape[2])
    t = layers.Permute((1, 3, 2))(x)  # N, H, C, W
    flip = layers.Dense(w, use_bias=False, trainable=False, name="mirror_width")
    t = flip(t)
    flip.set_weights([np.eye(w, dtype=np.float32)[::-1]])
    return layers.Permute((1, 3, 2))(t)


def _conv_bn(x, filters: int, pool: bool = False, stride: int = 1):
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    if pool:
        x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def resnet(input_shape, num_classes: int, base: tuple[int, int, int, int], width: float = 1.0, name: str = "resnet"):
    """prep conv, then [conv-pool + residual(conv, conv)], conv-pool, [conv-pool + residual]; global max pool.

    Inputs larger than 48 px get a stride-2 prep conv per doubling over 32, so the
    cost per image stays near that of a 32 px image.
    """
    import keras
    from keras import layers

    c = [max(4, int(round(v * width))) for v in base]
    x = inp = keras.Input(input_shape, name="image")
    side = min(input_shape[:2])
    x = _conv_bn(x, c[0], stride=2 if side > 48 else 1)
    while side > 96:  # very large inputs: pool down before the expensive stages
        x = layers.MaxPooling2D()(x)
        side //= 2
    x = _conv_bn(x, c[1], pool=True)
    x = layers.Add()([x, _conv_bn(_conv_bn(x, c[1]), c[1])])
    x = _conv_bn(x, c[2], pool=True)
    x = _conv_bn(x, c[3], pool=True)
    x = layers.Add()([x, _conv_bn(_conv_bn(x, c[3]), c[3])])
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, name="dense_logits")(x)
    out = layers.Rescaling(0.125, name="logits")(x)  # Page's output scale: max-pooled features are large
    return keras.Model(inp, out, name=name)


def classic_cnn(input_shape, num_classes: int, width: float = 1.0):
    """conv-conv-pool x2, then a dense head: small, fast, and quantizes cleanly."""
    import keras
    from keras import layers

    f = lambda n: max(4, int(round(n * width)))  # noqa: E731
    x = inp = keras.Input(input_shape, name="image")
    for filters in (32, 64):
        for _ in range(2):
            x = layers.Conv2D(f(filters), 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(f(128), 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"cnn_w{width:g}")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def mobilenet_v2_style(input_shape, num_classes: int, width: float = 1.0):
    """Inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1) scaled by ``width``.

    Small inputs (< 96 px) get a stride-1 stem and fewer down-samplings, so a 32x32
    digit is not reduced to a single pixel.
    """
    import keras
    from keras import layers

    small = min(input_shape[:2]) < 96
    # (expansion, channels, repeats, stride)
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    if not small:
        cfg += [(6, 160, 3, 2), (6, 320, 1, 1)]
    x = inp = keras.Input(input_shape, name="image")
    x = layers.Conv2D(_make_divisible(32 * width), 3, strides=1 if small else 2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU(6.0)(x)
    for t, c, n, s in cfg:
        out_c = _make_divisible(c * width)
        for i in range(n):
            x = _inverted_residual(x, t, out_c, s if i == 0 else 1)
    head = _make_divisible(1280 * max(1.0, width)) if not small else _make_divisible(256 * width)
    x = layers.Conv2D(head, 1, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=f"mobilenetv2_w{width:g}")


def _inverted_residual(x, expansion: int, out_c: int, stride: int):
    from keras import layers

    in_c = x.shape[-1]
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_c * expansion, 1, use_bias=False)(y)
        y = layers.BatchNormalization(momentum=0.9)(y)
        y = layers.ReLU(6.0)(y)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    y = layers.ReLU(6.0)(y)
    y = layers.Conv2D(out_c, 1, use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    if stride == 1 and in_c == out_c:
        y = layers.Add()([x, y])
    return y
