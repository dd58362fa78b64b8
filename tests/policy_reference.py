"""Explicit references for the emulated layers (shared by the policy tests).

The reference of an emulated op is written out with raw TensorFlow ops: each
operand rounded by `round_to_format` / `quantize_dfp` (straight-through, or
the weight gradient rounded where the spec says so), the FP32 op, and an
identity whose gradient rounds the error dY.  For layers whose math is long
(RNNs, attention) the reference runs the *float32* twin of the layer while
the backend's GEMM functions are replaced by these explicit functions: that
checks the policy machinery (layer lookup, roles, gradient placement) against
a definition that shares nothing with it but the rounding primitives.
"""

import contextlib
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import common as gemm_common
from tf_lowprec.keras import adapter
from tf_lowprec.keras import emulation


def rounded(x, entry):
    return x if entry is None else lp.quantize(x, entry[0], entry[1])


def operand(x, spec, role):
    """Forward rounding of a GEMM operand, straight-through (or dW-rounding) gradient."""
    entry = spec.role(role)
    gradient = spec.role("weight_gradients") if role == "weights" else None

    @tf.custom_gradient
    def quantizer(v):
        def grad(dy):
            return rounded(dy, gradient)

        return rounded(v, entry), grad

    return quantizer(tf.convert_to_tensor(x))


def error(y, spec):
    """Identity whose gradient rounds dY to the spec's error format."""
    entry = spec.role("errors")

    @tf.custom_gradient
    def identity(v):
        def grad(dy):
            return rounded(dy, entry)

        return tf.identity(v), grad

    return identity(y)


def role_of(x):
    return "weights" if isinstance(x, (keras.Variable, tf.Variable)) else "activations"


@contextlib.contextmanager
def explicit_backend(spec):
    """Replaces the routed backend GEMMs by explicit reference functions."""
    numpy_module, nn_module = adapter._backend_modules()
    matmul = adapter.original("numpy", "matmul")
    einsum = adapter.original("numpy", "einsum")
    conv = adapter.original("nn", "conv")
    depthwise = adapter.original("nn", "depthwise_conv")
    transpose = adapter.original("nn", "conv_transpose")

    def gemm(op, *xs):
        return error(op(*[operand(x, spec, role_of(x)) for x in xs]), spec)

    own_matmul = emulation.accumulator_gemm(spec.accumulator, "matmul")
    own_conv2d = emulation.accumulator_gemm(spec.accumulator, "conv2d")
    own_conv3d = emulation.accumulator_gemm(spec.accumulator, "conv3d")
    own_transpose = emulation.accumulator_gemm(spec.accumulator, "conv_transpose")

    def flattened(x, y):
        """[..., k] @ [k, n] as one GEMM of all rows (one reduction over K for dW too)."""
        if len(x.shape) > 2 and len(y.shape) == 2:
            rows = own_matmul(tf.reshape(x, [-1, x.shape[-1]]), y)
            return tf.reshape(rows, list(x.shape[:-1]) + [y.shape[-1]])
        return gemm_common.matmul_any_rank(own_matmul, x, y)

    def ref_matmul(a, b):
        # Both accumulators' GEMMs take batches of matrices; a 1-D operand is a row / column.
        if own_matmul is not None and min(len(a.shape), len(b.shape)) >= 1:
            return gemm(flattened, a, b)
        return gemm(matmul, a, b)

    def pair_product(eq, fallback):
        """A two-operand einsum: on the accumulator's GEMM when it is a matrix product."""
        if own_matmul is None:
            return fallback
        def product(a, b):
            (ta, tb), to = gemm_common.parse_einsum(eq, [len(a.shape), len(b.shape)])
            y = gemm_common.einsum_pair_as_matmul(own_matmul, ta, tb, to, a, b)
            return fallback(a, b) if y is None else y

        return product

    def ref_einsum(eq, *xs, **kw):
        if len(xs) < 2:
            return einsum(eq, *xs, **kw)
        if len(xs) == 2:
            return gemm(pair_product(eq, lambda *v: einsum(eq, *v, **kw)), *xs)
        return gemm(lambda *v: einsum(eq, *v, **kw), *xs)

    def spatial(value, count):
        return (value,) * count if isinstance(value, int) else tuple(value)

    def transpose_output(sizes, ksize, strides, padding, output_padding, dilations):
        """Keras' output size of a transposed convolution, axis by axis, written out."""
        out = []
        for i, (n, k, s, d) in enumerate(zip(sizes, ksize, strides, dilations)):
            span = (k - 1) * d + 1
            extra = None if output_padding is None else spatial(output_padding, len(sizes))[i]
            if padding == "valid":
                out.append((n - 1) * s + span + (max(span, s) - span if extra is None else extra))
            else:
                out.append(n * s if extra is None else (n - 1) * s + span % 2 + extra)
        return out

    def transpose_ref(x, k, *args, **kw):
        options = dict(zip(("strides", "padding", "output_padding", "data_format",
                            "dilation_rate"), args), **kw)
        if own_transpose is None or options.get("data_format") not in (None, "channels_last"):
            return error(transpose(operand(x, spec, "activations"),
                                   operand(k, spec, role_of(k)), *args, **kw), spec)
        count = len(x.shape) - 2
        strides = spatial(options.get("strides", 1), count)
        dilations = spatial(options.get("dilation_rate", 1), count)
        padding = options.get("padding", "valid").lower()
        sizes = transpose_output(x.shape[1:-1], k.shape[:-2], strides, padding,
                                 options.get("output_padding"), dilations)
        y = own_transpose(operand(x, spec, "activations"), operand(k, spec, role_of(k)), sizes,
                          strides=strides, padding=padding.upper(), dilations=dilations)
        return error(y, spec)

    def conv_ref(original):
        def ref(x, k, *args, **kw):
            options = dict(zip(("strides", "padding", "data_format", "dilation_rate"), args),
                           **kw)
            rank = len(x.shape)
            if own_conv3d is not None and original is conv and rank == 5 and (
                    options.get("data_format") in (None, "channels_last")):
                groups = x.shape[-1] // k.shape[-2]
                y = own_conv3d(operand(x, spec, "activations"), operand(k, spec, role_of(k)),
                               strides=spatial(options.get("strides", 1), 3),
                               padding=options["padding"].upper(),
                               dilations=spatial(options.get("dilation_rate", 1), 3),
                               **({"groups": groups} if groups > 1 else {}))
                return error(y, spec)
            if own_conv2d is not None and original in (conv, depthwise) and rank in (3, 4) and (
                    options.get("data_format") in (None, "channels_last")):
                xq, kq = operand(x, spec, "activations"), operand(k, spec, role_of(k))
                channels = x.shape[-1]
                if original is depthwise:  # groups = channels, kernel [.., C, M] -> [.., 1, C*M]
                    groups = channels
                    kq = tf.reshape(kq, list(k.shape[:-2]) + [1, channels * k.shape[-1]])
                else:
                    groups = channels // k.shape[-2]

                def pair(v):
                    v = (v,) * (rank - 2) if isinstance(v, int) else tuple(v)
                    return v if rank == 4 else (1,) + v

                if rank == 3:  # a 1-D convolution is a 2-D one of height 1
                    xq, kq = tf.expand_dims(xq, 1), tf.expand_dims(kq, 0)
                extra = {"groups": groups} if groups > 1 else {}
                y = own_conv2d(xq, kq, strides=pair(options.get("strides", 1)),
                               padding=options["padding"].upper(),
                               dilations=pair(options.get("dilation_rate", 1)), **extra)
                return error(tf.squeeze(y, 1) if rank == 3 else y, spec)
            return error(original(operand(x, spec, "activations"), operand(k, spec, role_of(k)),
                                  *args, **kw), spec)
        return ref

    def ref_separable(x, dk, pk, strides=1, padding="valid", data_format=None, dilation_rate=1):
        h = conv_ref(depthwise)(x, dk, strides, padding, data_format, dilation_rate)
        return conv_ref(conv)(h, pk, 1, "valid", data_format, 1)

    def ref_attention(q, k, v, bias, mask, is_causal, scale):
        def attention_einsum(eq):
            return pair_product(eq, lambda a, b: tf.einsum(eq, a, b, optimize="optimal"))

        logits = gemm(attention_einsum("BTNH,BSNH->BNTS"), q, k)
        logits = logits * tf.cast(scale, logits.dtype)
        if bias is not None:
            logits = logits + bias
        probs = tf.nn.softmax(nn_module._apply_masks(logits, mask, is_causal), axis=-1)
        return gemm(attention_einsum("BNTS,BSNH->BTNH"), probs, v)

    with contextlib.ExitStack() as stack:
        for module, name, fn in [
            (numpy_module, "matmul", ref_matmul),
            (numpy_module, "einsum", ref_einsum),
            (nn_module, "conv", conv_ref(conv)),
            (nn_module, "depthwise_conv", conv_ref(depthwise)),
            (nn_module, "conv_transpose", transpose_ref),
            (nn_module, "separable_conv", ref_separable),
            (nn_module, "_dot_product_attention_xla", ref_attention),
        ]:
            stack.enter_context(mock.patch.object(module, name, fn))
        yield


def fp32_twin(layer, dtype="float32"):
    """A copy of `layer` with a plain float32 policy and the same weights."""
    config = layer.get_config()
    config["dtype"] = dtype
    if "cell" in config:  # RNN wrappers keep the dtype in their cell's config too
        config["cell"]["config"]["dtype"] = dtype
    twin = layer.__class__.from_config(config)
    return twin


def values_and_grads(call, weights, inputs, upstream):
    """call(*inputs) and d(sum(out * upstream))/d(inputs, weights)."""
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = call(*inputs)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, inputs + list(weights))
    return y, grads


def assert_bitwise_equal(actual, expected, what=""):
    actual = np.asarray(actual, np.float32)
    expected = np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    different = actual.view(np.uint32) != expected.view(np.uint32)
    if different.any():
        index = np.argwhere(different)[0]
        raise AssertionError(
            f"{what}: {different.sum()} of {different.size} elements differ, first at "
            f"{tuple(index)}: {actual[tuple(index)]!r} vs {expected[tuple(index)]!r}"
        )
