"""The architectures `train` offers: a classic CNN, and a MobileNetV2-style net with a width multiplier.

Both end in a softmax, so the confidence threshold always sees probabilities,
and use only ops that convert to full-integer int8.
"""

from __future__ import annotations

ARCHS = ("cnn", "mobilenetv2")


def load_safe(path, error_cls: type[Exception], what: str = "the Keras model"):
    """Load a .keras file with safe_mode (no arbitrary code); any failure becomes ``error_cls`` naming the file."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises ValueError/TypeError/OSError/zip errors for bad or unsafe files
        raise error_cls(f"{path}: cannot load {what} ({type(e).__name__}: {str(e)[:300]})") from None


def build(arch: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
    if arch == "cnn":
        return classic_cnn(input_shape, num_classes, width)
    if arch == "mobilenetv2":
        return mobilenet_v2_style(input_shape, num_classes, width)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


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
    out = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
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
    out = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
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
