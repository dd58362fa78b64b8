"""Grouped DFP16 convolutions (groups > 1, several channels a group) as implicit INT16 GEMMs.

`dfp_conv2d` / `dfp_conv3d` with groups run one implicit convolution per
group (`tf_lowprec.gemm.dfp_conv.grouped_convolution`) on x, the filters and
the error quantized once as whole tensors.  Checked here:

* every pass bit for bit against NumPy (conv_testing's written-out patch
  GEMMs, each group with the whole tensors' exponents): so the kernels'
  re-quantization of each slice with its own exponent changes no bit;
* forward and d(filters) bit for bit the grouped-GEMM (im2col) path's; d(x)
  (one INT16 GEMM per group, no col2im) close to it;
* the seeds of stochastic rounding, the graph (no im2col, no col2im), the
  rule that sends many small groups to the grouped GEMM, a Keras step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp_conv
from conv_testing import conv_gradients, dfp_grouped_implicit_conv_references, pads_of, rand
from kernel_tiers import params as tier_params


def conv(x, w, strides, padding, dilations, groups, **kwargs):
    op = lp.dfp_conv3d if x.ndim == 5 else lp.dfp_conv2d
    return op(x, w, strides, padding, dilations, groups=groups, **kwargs)


def operands(case, seed):
    xs, ws, groups, strides, padding, dilations = case
    x, w = rand(xs, seed), rand(ws, seed + 1, scale=0.3)
    # Group 0 of x and of the error a thousand times smaller, the filters of every group
    # but 0 a hundred times: those slices' own exponents lie 7 to 10 below the tensors'.
    x[..., :xs[-1] // groups] *= 1e-3
    w[..., ws[-1] // groups:] *= 1e-2
    rank = len(xs) - 2
    out = [pads_of(n, k, s, d, padding)[2]
           for n, k, s, d in zip(xs[1:-1], ws[:rank], strides, dilations)]
    g = rand((xs[0], *out, ws[-1]), seed + 2, scale=1e-2)
    g[..., :ws[-1] // groups] *= 1e-3
    return x, w, g


CASES = [
    # (x shape, filters [*k, C / groups, O], groups, strides, padding, dilations)
    ((2, 1, 9, 6), (1, 3, 3, 4), 2, (1, 2), "SAME", (1, 1)),  # 1-D as height 1 (Conv1D)
    ((2, 5, 6, 8), (3, 3, 2, 8), 4, (1, 1), "SAME", (1, 1)),
    ((1, 6, 5, 6), (2, 3, 3, 4), 2, (2, 1), "VALID", (1, 2)),
    ((1, 4, 4, 3, 4), (2, 2, 2, 2, 6), 2, (1, 2, 1), "SAME", (1, 1, 1)),  # 3-D
    # K = 9 * 40 = 360 in the forward pass: several chunks per output.
    ((1, 4, 4, 80), (3, 3, 40, 4), 2, (1, 1), "SAME", (1, 1)),
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("case", CASES)
def test_bit_exact_against_numpy(case, isa):
    xs, ws, groups, strides, padding, dilations = case
    x, w, g = operands(case, 1)
    got = conv_gradients(conv, x, w, g, strides, padding, dilations, groups, isa=isa)
    want = dfp_grouped_implicit_conv_references(x, w, g, groups, strides, padding, dilations)
    for have, expected in zip(got, want):
        np.testing.assert_array_equal(have, expected)


@pytest.mark.parametrize("case", CASES)
def test_forward_and_filter_gradient_are_the_grouped_gemm_bits(case, monkeypatch):
    """The whole-tensor exponents make each group's sums the grouped GEMM's (power-of-two
    scaled integer chunk sums); d(x) is one INT16 GEMM a group instead of col2im."""
    xs, ws, groups, strides, padding, dilations = case
    x, w, g = operands(case, 4)
    implicit = conv_gradients(conv, x, w, g, strides, padding, dilations, groups)
    monkeypatch.setattr(dfp_conv, "grouped_applies", lambda *args: False)
    gemm = conv_gradients(conv, x, w, g, strides, padding, dilations, groups)
    np.testing.assert_array_equal(implicit[0], gemm[0])
    np.testing.assert_array_equal(implicit[2], gemm[2])
    np.testing.assert_allclose(implicit[1], gemm[1], rtol=0,
                               atol=1e-6 * np.abs(gemm[1]).max())


def test_stochastic_rounding_quantizes_the_whole_tensors_with_the_seeds():
    """x uses seed, the filters seed + [0, 1], the error seed + [0, 2], each drawn once on
    the whole tensor (not per group)."""
    case = CASES[1]
    xs, ws, groups, strides, padding, dilations = case
    x, w, g = operands(case, 7)
    seed = tf.constant([3, 9], tf.int64)
    got = conv_gradients(conv, x, w, g, strides, padding, dilations, groups,
                         rounding="stochastic", seed=seed, backward_rounding="stochastic")
    offsets = iter([0, 1, 2])

    def stochastic(v):
        q, e = lp.quantize_dfp(v, rounding="stochastic", seed=seed + [0, next(offsets)],
                               return_exponents=True)
        return np.asarray(q), np.full((1, 1, 1), np.asarray(e).reshape(-1)[0], np.int32)

    want = dfp_grouped_implicit_conv_references(x, w, g, groups, strides, padding, dilations,
                                                quantize=stochastic)
    for have, expected in zip(got, want):
        np.testing.assert_array_equal(have, expected)


def test_nan_stays_in_its_group_as_on_the_grouped_gemm(monkeypatch):
    """A NaN in group 0's x: NaN in that group's outputs over its windows and in its d(W),
    nowhere else (the whole-tensor exponent is taken from the finite values)."""
    x, w = rand((1, 4, 4, 4), 30), rand((3, 3, 2, 4), 31)
    x[0, 1, 1, 0] = np.nan
    g = np.ones((1, 4, 4, 4), np.float32)
    implicit = conv_gradients(conv, x, w, g, 1, "SAME", 1, 2)
    monkeypatch.setattr(dfp_conv, "grouped_applies", lambda *args: False)
    gemm = conv_gradients(conv, x, w, g, 1, "SAME", 1, 2)
    for have, want in zip(implicit, gemm):
        np.testing.assert_array_equal(np.isnan(have), np.isnan(want))
    assert np.isnan(implicit[0][..., :2]).sum() == 18 and not np.isnan(implicit[0][..., 2:]).any()


def _op_types(x, w, groups):
    @tf.function(autograph=False)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(conv(x, w, 1, "SAME", 1, groups))
        return [loss] + tape.gradient(loss, [x, w])

    graph = step.get_concrete_function(tf.constant(x), tf.constant(w)).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    return types


@pytest.mark.parametrize("xs, ws", [((1, 4, 4, 4), (3, 3, 2, 4)),
                                    ((1, 3, 3, 3, 4), (2, 2, 2, 2, 4))], ids=["2d", "3d"])
def test_graph_has_no_im2col_or_col2im(xs, ws):
    types = _op_types(rand(xs, 10), rand(ws, 11), 2)
    name = "LowprecDfpConv3d" if len(xs) == 5 else "LowprecDfpConv2d"
    assert {name, name + "BackpropFilter"} <= types
    assert not types & {"LowprecDfpMatmul", "LowprecDfpMatmulFused", "ExtractImagePatches",
                        "ExtractVolumePatches", "StridedSliceGrad", "ScatterNd",
                        "TensorScatterAdd", "UnsortedSegmentSum"}, types


def test_many_groups_of_few_channels_run_on_the_grouped_gemm():
    """32 groups of 2 channels: the per-group op calls cost more than the im2col they save
    (benchmarks/results/dfp16_grouped.md); 32 groups of 4 stay implicit."""
    few = _op_types(rand((1, 3, 3, 64), 12), rand((3, 3, 2, 32), 13), 32)
    assert "LowprecDfpConv2d" not in few and "LowprecDfpMatmulFused" in few
    assert dfp_conv.grouped_applies(np.zeros((1, 3, 3, 128)), np.zeros((3, 3, 4, 32)), 32,
                                    (1, 1), "SAME", (1, 1))


@pytest.fixture
def float32_afterwards():
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("layer,shape", [
    (lambda: keras.layers.Conv2D(4, 3, groups=2, padding="same"), (5, 4, 4)),
    (lambda: keras.layers.Conv1D(6, 3, groups=3, strides=2), (7, 6)),
    (lambda: keras.layers.Conv3D(4, 2, groups=2), (3, 3, 3, 4)),
], ids=["conv2d", "conv1d", "conv3d"])
def test_keras_grouped_layer_trains_one_step_on_the_implicit_gemms(layer, shape,
                                                                   float32_afterwards,
                                                                   monkeypatch):
    traced = []
    grouped = dfp_conv.grouped_convolution

    def counting(*args, **kwargs):
        traced.append(args[2])
        return grouped(*args, **kwargs)

    monkeypatch.setattr(dfp_conv, "grouped_convolution", counting)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy("dfp16"))
    model = keras.Sequential([keras.Input(shape), layer(), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = np.asarray(model.layers[0].weights[0])
    model.train_on_batch(rand((2, *shape), 14), rand((2, 1), 15))
    assert traced and traced[0] == model.layers[0].groups
    after = np.asarray(model.layers[0].weights[0])
    assert np.isfinite(after).all() and not np.array_equal(before, after)


def test_keras_conv1d_of_one_group_runs_on_the_implicit_2d_ops(float32_afterwards,
                                                                monkeypatch):
    """Conv1D is a 2-D convolution of height 1 (the emulation lifts it), so one group runs
    on the implicit conv2d ops, as a transposed 1-D one does: no im2col, no col2im."""
    shapes = []
    convolution = dfp_conv.convolution

    def recording(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return convolution(x, *args, **kwargs)

    monkeypatch.setattr(dfp_conv, "convolution", recording)
    keras.config.set_dtype_policy(lp.Policy("dfp16"))
    layer = keras.layers.Conv1D(3, 3, strides=2)
    x = tf.constant(rand((2, 9, 4), 16))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x))
    lp.dfp_gemm_counters(reset=True)
    tape.gradient(loss, [x, layer.kernel])
    assert shapes == [(2, 1, 9, 4)]
    assert lp.dfp_gemm_counters()["calls"] == 2  # d(x) and d(kernel), on the implicit ops
