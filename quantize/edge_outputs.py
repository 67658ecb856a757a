"""The edge network with what routing needs beside its answer: the logits before the softmax and pooled features.

An int8 softmax output has 256 levels, so a probability below 1/256 reads as 0
and the logits cannot be recovered from it; scores that need the logits (the
temperature, the energy, the deferral model) or features (the Mahalanobis
distance) get them as extra outputs of the same int8 model, named by the
SavedModel signature, which the device reads through the interpreter's
signature runner:

* ``probabilities``: the classifier's answer, computed as before;
* ``logits``: the softmax's input;
* ``features``: the input of the Dense layer that makes the logits (the pooled features);
* ``stage_1`` ... ``stage_K``: the global average of the last activation at each
  spatial resolution of the network (the feature ensemble of Lee et al. 2018,
  "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
  Adversarial Attacks"): early stages see colour and texture, which is what
  tells a grey digit from a photo.

The model is rebuilt with the same layers (shared weights) by
``keras.models.clone_model``, with nested functional models (a logits model
wrapped in a softmax, a flip-averaged model) inlined through Keras's own graph
runner (``Functional._run_through_graph``) so every tensor is reachable. The
extra outputs are tensors the network already computes, plus one mean per
stage, so the ``probabilities`` output is the same int8 model's.
When the model has its image's mirror averaged in, features come from the
first (unmirrored) pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROUTING_OUTPUTS = ("probabilities", "logits", "features")


@dataclass
class _Trace:
    """Every layer call made while rebuilding the model, in order: (pass, layer, first input, output).

    Pass 0 is the top-level graph; each inlined call of a nested model is a new pass, and ``direct``
    holds the passes that were fed the model's input itself (not, say, its mirror image).
    """

    calls: list[tuple[int, Any, Any, Any]] = field(default_factory=list)
    passes: int = 0
    direct: list[int] = field(default_factory=list)

    def chosen_pass(self) -> int:
        """The pass features come from: the first nested pass fed the input itself, else the top level."""
        return self.direct[0] if self.direct else 0


def _is_softmax(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


def _is_model_input(t: Any) -> bool:
    import keras

    history = getattr(t, "_keras_history", None)
    return history is not None and isinstance(history.operation, keras.layers.InputLayer)


def _rebuild(model, trace: _Trace):
    """``model`` again, on its own layers, with nested functional models inlined and every call traced."""
    import keras

    current = [0]

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):  # a functional model
            outer, trace.passes = current[0], trace.passes + 1
            current[0] = trace.passes
            if _is_model_input(args[0]):
                trace.direct.append(trace.passes)
            # inline: run the nested graph's own layers on this tensor (what Functional.call does)
            out = layer._run_through_graph(args[0], operation_fn=lambda op: op, call_fn=call)
            current[0] = outer
            return out
        out = layer(*args, **kwargs)
        trace.calls.append((current[0], layer, args[0] if args else None, out))
        return out

    return keras.models.clone_model(model, clone_function=lambda la: la, call_function=call)


def _head(trace: _Trace):
    """(logits, probabilities, features or None) from the traced calls, or None if the model does not end in a
    softmax: ``Dense(activation="softmax")`` (quantize.models' cnn) or a ``Softmax``/``Activation`` layer."""
    import keras

    _, last, x, out = trace.calls[-1]
    if isinstance(last, keras.layers.Dense) and _is_softmax(last.activation):
        linear = keras.layers.Dense(last.units, use_bias=last.use_bias, name="routing_logits")
        logits = linear(x)
        linear.set_weights(last.get_weights())
        return logits, keras.layers.Softmax(name="routing_probabilities")(logits), x
    softmax = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(last.activation))
    if not softmax:
        return None
    chosen = trace.chosen_pass()
    dense_inputs = [xi for p, la, xi, _ in trace.calls if p == chosen and isinstance(la, keras.layers.Dense)]
    return x, out, dense_inputs[-1] if dense_inputs else None


def _stages(trace: _Trace, stop: Any) -> list[Any]:
    """The last 4-D activation at each spatial resolution in the chosen pass, before ``stop`` (the features)."""
    chosen = trace.chosen_pass()
    last_at: dict[tuple[int, int], Any] = {}
    for p, _, _, out in trace.calls:
        if out is stop:
            break
        shape = getattr(out, "shape", None)
        if p == chosen and shape is not None and len(shape) == 4:
            last_at[(shape[1], shape[2])] = out
    return list(last_at.values())


def with_routing_outputs(model, *, stages: bool = True):
    """A Keras model with outputs ``probabilities``, ``logits``, ``features`` (when the logits come from a Dense) and
    ``stage_1..K`` (with ``stages``), or None when the model does not end in a softmax.

    Raises nothing for an unusual model: None means "route on the probabilities alone".
    """
    import keras

    trace = _Trace()
    rebuilt = _rebuild(model, trace)
    head = _head(trace)
    if head is None:
        return None
    logits, probs, features = head
    outputs = {"probabilities": probs, "logits": logits}
    if features is not None:
        outputs["features"] = features
    if stages:
        stop = features if features is not None else logits
        for i, act in enumerate(_stages(trace, stop), start=1):
            outputs[f"stage_{i}"] = keras.layers.GlobalAveragePooling2D(name=f"routing_stage_{i}")(act)
    return keras.Model(rebuilt.inputs, outputs, name=f"{model.name}_routing")
