"""The edge network with what routing needs beside its answer: the logits before the softmax and the pooled features.

An int8 softmax output has 256 levels, so a probability below 1/256 reads as 0
and the logits cannot be recovered from it; scores that need the logits (the
temperature, the energy, the deferral model) or the features (Mahalanobis
distance) get them as extra outputs of the same int8 model, named by the
SavedModel signature (``probabilities``, ``logits``, ``features``), which the
device reads through the interpreter's signature runner.

Adding the two outputs changes no computation: they are tensors the
classifier already computes (the head's matmul before its softmax, and the
head's input), so the ``probabilities`` output is the same int8 model's.
"""

from __future__ import annotations

from typing import Any

ROUTING_OUTPUTS = ("probabilities", "logits", "features")


def _softmax_head(model) -> tuple[Any, Any, Any] | None:
    """(features tensor, head Dense layer, logits tensor or None) for a model ending in a softmax, else None.

    Two endings are understood: ``Dense(activation="softmax")`` (quantize.models) and a
    ``Dense`` followed by a separate ``Softmax``/``Activation("softmax")`` layer (imports, distillation).
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and _is_softmax(last.activation):
        return last.input, last, None
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)
    ):
        logits = last.input
        producer = logits._keras_history.operation if hasattr(logits, "_keras_history") else None
        if isinstance(producer, keras.layers.Dense) and not _is_softmax(producer.activation):
            return producer.input, None, logits
        return None, None, logits
    return None


def _is_softmax(fn) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


def with_routing_outputs(model):
    """A Keras model with outputs ``{"probabilities", "logits", "features"}`` (``features`` when the head is a Dense),
    or None when the model does not end in a softmax over a layer whose input can be read.

    The probabilities are computed by the same ops as in ``model`` (a linear Dense carrying the
    head's weights, then a softmax), so converting either model gives the same answers.
    """
    import keras

    head = _softmax_head(model)
    if head is None:
        return None
    features, dense, logits = head
    if dense is not None:  # Dense(softmax): split it into the linear part and the softmax
        linear = keras.layers.Dense(dense.units, activation=None, use_bias=dense.use_bias, name="routing_logits")
        logits = linear(features)
        linear.set_weights(dense.get_weights())
    probs = keras.layers.Softmax(name="routing_probabilities")(logits)
    outputs = {"probabilities": probs, "logits": logits}
    if features is not None:
        outputs["features"] = features
    return keras.Model(model.inputs, outputs, name=f"{model.name}_routing")
