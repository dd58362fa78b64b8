"""Guards for the Keras internals `tf_lowprec._keras_hooks` relies on.

If a Keras upgrade moves or reshapes one of them, these tests fail with the
name of the broken assumption, instead of the policies silently not emulating.
"""

import inspect

import keras
import numpy as np
import pytest

import tf_lowprec as lp
from tf_lowprec import _keras_hooks
from keras.src.backend.tensorflow import nn as tf_nn
from keras.src.backend.tensorflow import numpy as tf_numpy


def test_supported_version_check():
    _keras_hooks.check_keras_version()  # the installed Keras is supported
    for version in ("3.16.0", "2.15.0", "4.0.0"):
        with pytest.raises(_keras_hooks.UnsupportedKerasVersionError, match=version):
            _keras_hooks.check_keras_version(version)


def test_install_is_idempotent():
    lp.Policy("bf16")  # installs
    routed = {name: getattr(tf_numpy, name) for name in ("matmul", "einsum")}
    _keras_hooks.install()
    _keras_hooks._installed = False  # force the install path again
    _keras_hooks.install()
    assert _keras_hooks.installed()
    for name, function in routed.items():
        assert getattr(tf_numpy, name) is function
        original = function._lowprec_original
        assert not hasattr(original, "_lowprec_original")  # never wrapped twice


def test_ops_reach_the_routed_backend_functions():
    # keras.ops.* must look the backend function up at call time.
    from keras.src import backend

    assert backend.numpy is tf_numpy and backend.nn is tf_nn


@pytest.mark.parametrize("module, name, parameters", [
    (tf_numpy, "matmul", ["x1", "x2"]),
    (tf_numpy, "einsum", ["subscripts", "operands", "kwargs"]),
    (tf_nn, "conv", ["inputs", "kernel", "strides", "padding", "data_format", "dilation_rate"]),
    (tf_nn, "depthwise_conv",
     ["inputs", "kernel", "strides", "padding", "data_format", "dilation_rate"]),
    (tf_nn, "separable_conv", ["inputs", "depthwise_kernel", "pointwise_kernel", "strides",
                               "padding", "data_format", "dilation_rate"]),
    (tf_nn, "conv_transpose", ["inputs", "kernel", "strides", "padding", "output_padding",
                               "data_format", "dilation_rate"]),
    (tf_nn, "_dot_product_attention_xla",
     ["query", "key", "value", "bias", "mask", "is_causal", "scale"]),
])
def test_routed_functions_keep_their_signatures(module, name, parameters):
    lp.Policy("bf16")
    original = getattr(module, name)._lowprec_original
    assert list(inspect.signature(original).parameters) == parameters
    assert callable(getattr(tf_nn, "_apply_masks"))


def test_layer_call_pushes_a_name_scope_with_the_layer_as_caller():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append([layer for layer, _ in _keras_hooks.current_callers()])
            return x

    probe = Probe()
    model = keras.Sequential([keras.Input((2,)), probe])
    model(np.ones((1, 2), "float32"))
    assert seen and seen[-1][-1] is probe and seen[-1][0] is model


def test_from_config_still_turns_float_policies_into_names():
    # The reason dtype_policies.get is wrapped (see _keras_hooks docstring).
    layer = keras.layers.Dense(2, dtype=lp.Policy("fp8"))
    config = keras.layers.serialize(layer)
    restored = keras.layers.deserialize(config)
    assert restored.dtype_policy == lp.Policy("fp8")


def test_multi_head_attention_uses_dot_product_attention():
    # MHA's fast path calls ops.dot_product_attention, whose TF core we route.
    calls = []
    routed = tf_nn._dot_product_attention_xla

    def spy(*args, **kwargs):
        calls.append(1)
        return routed(*args, **kwargs)

    tf_nn._dot_product_attention_xla = spy
    try:
        layer = keras.layers.MultiHeadAttention(2, 4, dtype=lp.Policy("bf16"))
        x = np.ones((1, 3, 4), "float32")
        layer(x, x)
    finally:
        tf_nn._dot_product_attention_xla = routed
    assert calls
