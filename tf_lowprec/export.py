"""Export to a SavedModel that stock TensorFlow Serving runs.

The C++ kernels are not part of stock TensorFlow, so an exported graph must not
contain them.  `export_saved_model` traces the model with either

- numerics="emulated": every rounding lowered to the pure-TensorFlow path
  (`tf_lowprec.numerics.tf_rounding`, bit-identical to the kernels), so the served
  model computes exactly what `model.predict` computes under its policies; or
- numerics="float32": the emulation stripped, plain FP32 layers.

`keras.Model.export(path, format="tf_saved_model")` of a model under a policy
takes the "emulated" route too (the adapter's "export" listener), so it is
safe as well.

>>> import keras, numpy as np, tf_lowprec as lp
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=lp.Policy("fp8"))])
>>> lp.export_saved_model(model, "/tmp/lowprec_doctest_export")
>>> import tensorflow as tf
>>> served = tf.saved_model.load("/tmp/lowprec_doctest_export")
>>> "serving_default" in served.signatures
True
"""

import contextlib
import threading

import keras

from tf_lowprec.keras import adapter
from tf_lowprec.keras import policy as policy_lib

NUMERICS = ("emulated", "float32")
_state = threading.local()


def in_traced_numerics():
    """Whether a `traced_numerics` block is active in this thread."""
    return getattr(_state, "depth", 0) > 0


def _policy_layers(model):
    return [layer for layer in adapter.model_layers(model)
            if isinstance(layer.dtype_policy, policy_lib.Policy)]


@contextlib.contextmanager
def traced_numerics(model, numerics):
    """Within the block, `model` traces with pure-TF rounding or without emulation.

    Policies are shared objects, so they are swapped per layer and restored
    afterwards rather than changed in place.
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(map(repr, NUMERICS))}; "
                         f"got {numerics!r}")
    layers = _policy_layers(model)
    saved = [(layer, layer.dtype_policy) for layer in layers]
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        for layer, policy in saved:
            if numerics == "float32":
                layer.dtype_policy = keras.DTypePolicy("float32")
            else:
                layer.dtype_policy = policy.with_implementation("tf")
        yield
    finally:
        _state.depth -= 1
        for layer, policy in saved:
            layer.dtype_policy = policy


def export_saved_model(model, path, numerics="emulated", *, input_signature=None,
                       verbose=False):
    """Writes a SavedModel with a `serving_default` signature, free of custom ops.

    Args:
      model: a built Keras model (any mix of lp.Policy and float layers).
      path: output folder.
      numerics: "emulated" (pure-TF rounding, bit-identical to `predict`) or
        "float32" (emulation stripped).
      input_signature: optional, as for `keras.Model.export`.
    """
    with traced_numerics(model, numerics):
        model.export(path, format="tf_saved_model", input_signature=input_signature,
                     verbose=verbose)


def _export_numerics(model):
    """The adapter's "export" listener: `Model.export` traces with pure-TF rounding."""
    return None if in_traced_numerics() else traced_numerics(model, "emulated")


adapter.set_listener("export", _export_numerics)
