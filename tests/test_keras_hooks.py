"""Guards for the Keras internals `tf_lowprec.keras.adapter` relies on.

If a Keras upgrade moves or reshapes one of them, these tests fail with the
name of the broken assumption, instead of the policies silently not emulating.
"""

import inspect

import keras
import numpy as np
import pytest

import tf_lowprec as lp
from tf_lowprec.keras import adapter
from keras.src.backend.tensorflow import nn as tf_nn
from keras.src.backend.tensorflow import numpy as tf_numpy


def test_supported_version_check():
    adapter.check_keras_version()  # the installed Keras is supported
    for version in ("3.16.0", "2.15.0", "4.0.0"):
        with pytest.raises(adapter.UnsupportedKerasVersionError, match=version):
            adapter.check_keras_version(version)


def test_install_is_idempotent():
    assert adapter.installed()  # `import tf_lowprec` installed it
    routed = {name: getattr(tf_numpy, name) for name in ("matmul", "einsum")}
    adapter.install()
    adapter._installed = False  # force the install path again
    adapter.install()
    assert adapter.installed()
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
    (tf_numpy, "dot", ["x1", "x2"]),
    (tf_numpy, "tensordot", ["x1", "x2", "axes"]),
    (tf_numpy, "inner", ["x1", "x2"]),
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
            seen.append([layer for layer, _ in adapter.current_callers()])
            return x

    probe = Probe()
    model = keras.Sequential([keras.Input((2,)), probe])
    model(np.ones((1, 2), "float32"))
    assert seen and seen[-1][-1] is probe and seen[-1][0] is model


def test_from_config_still_turns_float_policies_into_names():
    # The reason dtype_policies.get is wrapped (see the adapter's docstring).
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


def test_constructing_a_policy_installs_nothing(monkeypatch):
    def fail():
        raise AssertionError("a Policy must not patch Keras")

    monkeypatch.setattr(adapter, "install", fail)
    policy = lp.Policy("fp8", rounding="stochastic")
    keras.layers.Dense(2, dtype=policy)


def test_a_failed_install_is_reported_by_policies(monkeypatch):
    error = adapter.UnsupportedKerasVersionError("keras 9.0 is not supported")
    monkeypatch.setattr(adapter, "_install_error", error)
    with pytest.raises(adapter.UnsupportedKerasVersionError, match="9.0"):
        lp.Policy("bf16")


def test_layer_neighbours_reads_the_functional_graph():
    # scaling_rule="paper" walks the model through the layers' inbound/outbound nodes.
    inputs = keras.Input((4,))
    first = keras.layers.Dense(3)
    second = keras.layers.Dense(2)
    hidden = first(inputs)
    second(hidden)
    parents, children = adapter.layer_neighbours(second)
    assert parents == [first] and children == []
    parents, children = adapter.layer_neighbours(first)
    assert children == [second] and len(parents) == 1
    assert isinstance(parents[0], keras.layers.InputLayer)
    shared = keras.layers.Dense(2)
    shared(inputs), shared(inputs)  # two inbound nodes: no single place in a graph
    assert adapter.layer_neighbours(shared) is None
    assert adapter.layer_neighbours(keras.layers.Dense(2)) is None  # never called


@pytest.mark.parametrize("strides, padding, output_padding, want", [
    (1, "valid", None, (2, 7, 7, 5)),
    (2, "same", None, (2, 10, 10, 5)),
    (2, "valid", 1, (2, 12, 12, 5)),
])
def test_conv_transpose_output_shape_is_keras_own(strides, padding, output_padding, want):
    # The emulated Conv*Transpose builds its output with Keras' own size rule.
    shape = adapter.conv_transpose_output_shape(
        (2, 5, 5, 3), (3, 3), 5, strides, padding, output_padding, "channels_last", 1)
    layer = keras.layers.Conv2DTranspose(5, 3, strides=strides, padding=padding,
                                         output_padding=output_padding)
    assert tuple(shape) == want == tuple(layer(np.zeros((2, 5, 5, 3), np.float32)).shape)
