"""dfp16: each operand quantized once per INT16 GEMM, inside the GEMM's packing (issue 16).

Under a policy whose operands and error share one per-tensor DFP format rounded
to nearest, the emulation hands the INT16 GEMM the unrounded operands and error
(`LayerContext.kernel_format`).  The explicit path (round each operand with
`quantize_dfp`, round the error with `round_gradient`, then the GEMM) is what
runs while a role hook is installed: both must give the same bits, and the
fused graph must hold no separate DFP rounding op.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.keras import emulation


def _step(layer, x, upstream):
    """(output, gradients of x and of the trainable weights) of one call."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    grads = tape.gradient(y, [x] + layer.trainable_weights, output_gradients=upstream)
    return [y] + grads


def _explicit(fn):
    """fn() run with a pass-through role hook: the operands are rounded explicitly."""
    remove = emulation.add_role_hook(lambda context, role, x, round_fn, axis: round_fn(x))
    try:
        return fn()
    finally:
        remove()


LAYERS = [
    ("dense", lambda: keras.layers.Dense(7), (5, 9)),
    ("dense_on_sequence", lambda: keras.layers.Dense(6), (2, 3, 8)),
    ("einsum_dense", lambda: keras.layers.EinsumDense("abc,cd->abd", (3, 5)), (2, 3, 4)),
    # Every input element is in a patch: the GEMM's exponent is the input's.
    ("conv2d_valid", lambda: keras.layers.Conv2D(4, 3), (2, 6, 6, 3)),
    # Stride 2 skips the last row and column: dfp_conv2d quantizes x itself first.
    ("conv2d_skipping", lambda: keras.layers.Conv2D(3, 2, strides=2), (1, 7, 7, 2)),
    ("depthwise", lambda: keras.layers.DepthwiseConv2D(3, padding="same"), (1, 5, 5, 3)),
    ("conv3d_valid", lambda: keras.layers.Conv3D(3, 2), (2, 3, 4, 3, 2)),
    ("conv3d_skipping", lambda: keras.layers.Conv3D(2, 2, strides=2), (1, 5, 3, 5, 2)),
    ("conv2d_transpose", lambda: keras.layers.Conv2DTranspose(3, 3, strides=2,
                                                              padding="same"), (2, 3, 4, 2)),
    # Stride 3 over a kernel of 2: every third output element is in no window of x, and
    # the error's largest element is one of them: dfp_conv_transpose quantizes it first.
    ("conv1d_transpose_gaps", lambda: keras.layers.Conv1DTranspose(2, 2, strides=3),
     (2, 4, 3)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_fused_quantization_gives_the_bits_of_explicit_rounding(name, make, shape):
    rng = np.random.RandomState(3)
    # Non-negative inputs with a large outlier: the exponent is set by one element.
    x = np.abs(rng.randn(*shape)).astype("float32")
    x.reshape(-1)[-1] = 37.0  # conv2d_skipping: in no patch
    layer = make()
    layer.dtype_policy = lp.Policy("dfp16")
    layer.build(shape)
    y_shape = layer.compute_output_shape(shape)
    upstream = rng.randn(*y_shape).astype("float32") * 1e-3
    upstream.reshape(-1)[-1] = 0.5  # conv1d_transpose_gaps: in no window
    upstream = tf.constant(upstream)
    lp.dfp_gemm_counters(reset=True)
    fused = _step(layer, x, upstream)
    assert lp.dfp_gemm_counters()["calls"] >= 3  # forward, dx, dw on the INT16 GEMM
    explicit = _explicit(lambda: _step(layer, x, upstream))
    for got, want in zip(fused, explicit):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _op_types(layer, shape):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, [x] + layer.trainable_weights)

    graph = step.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    types = set()
    for op in graph.get_operations():
        types.add(op.type)
        # Gradient functions are traced as nested functions.
        for fn in getattr(op, "_func_graph", []) or []:
            types.update(o.type for o in fn.get_operations())
    for fn in graph._functions.values():
        types.update(o.type for o in fn.graph.get_operations())
    return types


@pytest.mark.parametrize("make, shape, gemm", [
    (lambda: keras.layers.Dense(4), (3, 5), "LowprecDfpMatmulFused"),
    # Conv3D and 2-D transposed convolutions run on the implicit-GEMM conv ops, which quantize
    # inside their packing too.
    (lambda: keras.layers.Conv3D(2, 2), (1, 3, 3, 3, 2), "LowprecDfpConv3d"),
    (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same"), (1, 3, 3, 2),
     "LowprecDfpConv2d"),
], ids=["dense", "conv3d", "conv2d_transpose"])
def test_fused_path_has_no_separate_rounding_op(make, shape, gemm):
    layer = make()
    layer.dtype_policy = lp.Policy("dfp16")
    layer.build(shape)
    types = _op_types(layer, shape)
    assert gemm in types, sorted(types)
    assert not any(t.startswith("LowprecQuantize") or t.startswith("LowprecRound")
                   for t in types), sorted(types)
    explicit = _explicit(lambda: _op_types(layer, shape))
    assert any(t.startswith("LowprecQuantize") for t in explicit), sorted(explicit)


def test_stochastic_rounding_keeps_the_explicit_rounding():
    layer = keras.layers.Dense(4, dtype=lp.Policy("dfp16", rounding="stochastic"))
    layer.build((3, 5))
    assert any(t.startswith("LowprecQuantize") for t in _op_types(layer, (3, 5)))


@pytest.mark.parametrize("fmt", [lp.DfpFormat(16, block_size=32), lp.DfpFormat(20)],
                         ids=["block_scaled", "20_bits"])
def test_dfp_the_int16_gemm_cannot_hold_is_refused_with_int32_accumulator(fmt):
    # Both were re-quantized to per-tensor DFP16 inside the GEMM (lossy) before.
    with pytest.raises(ValueError, match="at most 16 bits with one exponent per tensor"):
        lp.PrecisionSpec(activations=fmt, weights=fmt, errors=fmt, accumulator="int32")
