"""The coverage table of docs/design.md, cell by cell, and the report of unemulated GEMMs.

Each row of the table ("Coverage of the GEMMs") is a stock Keras layer, a
`keras.ops` GEMM or a raw TensorFlow GEMM in a custom layer; each column a
preset.  `test_coverage_cell` reads the cell from the document and checks it
on tiny tensors with one forward and backward call:

- "emulated": output and gradients differ from the same layer's unemulated
  (FP32) run, and stay close to it; no INT16 GEMM runs;
- "INT16 GEMM" / "BF16 GEMM": the same, and the accumulator's kernel runs in
  the forward pass and again in the backward pass;
- "reported": traced, the layer warns (UnemulatedGemmWarning) and its
  output is the FP32 one, bit for bit.
"""

import os
import warnings
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import accumulation as accumulation_gemm
from tf_lowprec.gemm import bf16 as bf16_gemm
from tf_lowprec.gemm import bf16_conv
from tf_lowprec.gemm import reference as reference_gemm
from tf_lowprec.keras import emulation

L = keras.layers
DESIGN = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "design.md")
PRESETS = ("bf16", "fp16", "hfp8", "fp8", "bf16_native", "dfp16", "fp8_wang", "mxfp8",
           "fp8_delayed")
# Largest |emulated - FP32| / max|FP32| accepted, by preset (a few roundings of the format).
TOLERANCE = {"bf16": 0.05, "fp16": 0.01, "hfp8": 0.5, "fp8": 0.5, "bf16_native": 0.05,
             "dfp16": 0.01, "fp8_wang": 0.5, "mxfp8": 0.5,
             "fp8_delayed": 0.5}


class OpLayer(L.Layer):
    """A custom layer whose GEMM is `fn(x, w)` with a weight of `weight_shape`."""

    def __init__(self, fn, weight_shape, inner=None, **kwargs):
        super().__init__(**kwargs)
        self.fn, self.weight_shape, self.inner = fn, weight_shape, inner

    def build(self, input_shape):
        self.w = self.add_weight(shape=self.weight_shape, initializer="glorot_uniform")

    def call(self, x):
        return self.fn(x, self.w)


def op_row(fn, weight_shape, input_shape):
    return lambda: OpLayer(fn, weight_shape), input_shape


def attention(layer):
    """Self-attention as a one-input layer."""
    return OpLayer(lambda x, w: layer(x, x) if not isinstance(layer, L.Attention)
                   else layer([x, x * w]), (1,), inner=layer)


ops = keras.ops
ROWS = {
    "Dense": (lambda: L.Dense(3), (4,)),
    "EinsumDense": (lambda: L.EinsumDense("abc,cd->abd", output_shape=(3, 3)), (3, 4)),
    "MultiHeadAttention": (lambda: attention(L.MultiHeadAttention(2, 2)), (3, 4)),
    "GroupedQueryAttention": (lambda: attention(L.GroupQueryAttention(2, 2, 1)), (3, 4)),
    "Attention": (lambda: attention(L.Attention()), (3, 4)),
    "AdditiveAttention": (lambda: attention(L.AdditiveAttention()), (3, 4)),
    "Conv1D": (lambda: L.Conv1D(3, 3), (6, 2)),
    "Conv2D": (lambda: L.Conv2D(3, 3), (5, 5, 2)),
    "Conv2D(groups=2)": (lambda: L.Conv2D(4, 3, groups=2), (5, 5, 4)),
    "Conv3D": (lambda: L.Conv3D(2, 2), (3, 3, 3, 2)),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(3), (6, 2)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3), (5, 5, 2)),
    "SeparableConv1D": (lambda: L.SeparableConv1D(3, 3), (6, 2)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(3, 3), (5, 5, 2)),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(2, 3), (4, 2)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(2, 3), (3, 3, 2)),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(2, 2), (2, 2, 2, 2)),
    "SimpleRNN": (lambda: L.SimpleRNN(3), (2, 2)),
    "LSTM": (lambda: L.LSTM(3), (2, 2)),
    "GRU": (lambda: L.GRU(3), (2, 2)),
    "Bidirectional(LSTM)": (lambda: L.Bidirectional(L.LSTM(2)), (2, 2)),
    "ConvLSTM1D": (lambda: L.ConvLSTM1D(2, 2), (1, 3, 2)),
    "ConvLSTM2D": (lambda: L.ConvLSTM2D(2, 2), (1, 3, 3, 2)),
    "ConvLSTM3D": (lambda: L.ConvLSTM3D(2, 2), (1, 2, 2, 2, 2)),
    "ops.matmul": op_row(ops.matmul, (4, 3), (4,)),
    "ops.matmul, 1-D operand": op_row(lambda x, w: ops.matmul(w[:, 0], x), (3, 2), (3, 4)),
    "ops.matmul, broadcast batch": op_row(lambda x, w: ops.matmul(x[:, None], w), (2, 4, 3),
                                          (3, 4)),
    "ops.einsum": op_row(lambda x, w: ops.einsum("bti,bsi->bts", x, x * w), (4,), (3, 4)),
    "ops.einsum, ellipsis": op_row(lambda x, w: ops.einsum("...i,ij->...j", x, w), (4, 3),
                                   (3, 4)),
    "ops.einsum, 3 operands": op_row(lambda x, w: ops.einsum("bi,ij,jk->bk", x, w, w[:, :3]),
                                     (4, 4), (4,)),
    "ops.einsum, index summed in one operand": op_row(
        lambda x, w: ops.einsum("bij,jk->bk", x, w), (4, 3), (3, 4)),
    "ops.dot": op_row(ops.dot, (4, 3), (4,)),
    "ops.tensordot": op_row(lambda x, w: ops.tensordot(x, w, axes=[[1, 2], [0, 1]]), (3, 4, 2),
                            (3, 4)),
    "ops.inner": op_row(ops.inner, (3, 4), (4,)),
    "ops.vdot": op_row(lambda x, w: ops.vdot(x[0], w), (4,), (4,)),
    "tf.matmul": op_row(tf.matmul, (4, 3), (4,)),
    "tf.einsum": op_row(lambda x, w: tf.einsum("bi,ij->bj", x, w), (4, 3), (4,)),
    "x @ w (tensors)": op_row(lambda x, w: x @ tf.convert_to_tensor(w), (4, 3), (4,)),
    "tf.tensordot": op_row(lambda x, w: tf.tensordot(x, w, 1), (4, 3), (4,)),
    "tf.nn.conv2d": op_row(lambda x, w: tf.nn.conv2d(x, w, 1, "VALID"), (2, 2, 2, 3),
                           (4, 4, 2)),
}


def read_table():
    """{row: {preset: cell}} of the coverage table in docs/design.md."""
    with open(DESIGN) as f:
        text = f.read()
    section = text.split("## Coverage of the GEMMs", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].strip("`")] = dict(zip(header[1:], cells[1:]))
    return header[1:], table


HEADER, TABLE = read_table()


def test_table_has_every_row_and_preset():
    assert tuple(HEADER[:len(PRESETS)]) == PRESETS
    assert sorted(TABLE) == sorted(ROWS)


def make_layer(row, preset):
    make, shape = ROWS[row]
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy(preset))
    try:
        layer = make()
    finally:
        keras.config.set_dtype_policy("float32")
    x = tf.constant(np.random.default_rng(1).normal(size=(2,) + shape).astype(np.float32))
    return layer, x


def unemulated():
    """Every routed call declines: the layer runs Keras' own FP32 ops."""
    return mock.patch.object(emulation, "active_context", lambda callers: None)


def forward_backward(layer, x, upstream=None, after_forward=lambda: None):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        forward = after_forward()
        if upstream is None:
            upstream = tf.constant(np.random.default_rng(2).normal(size=y.shape), tf.float32)
        loss = tf.reduce_sum(y * upstream)
    # The layer's parameters; not the scale state of delayed scaling, whose "gradients" are
    # its next values (Keras' overwrite_with_gradient variables).
    parameters = [w for w in layer.trainable_weights
                  if not getattr(w, "overwrite_with_gradient", False)]
    return y, upstream, tape.gradient(loss, [x] + parameters), forward


_unemulated_runs = {}


def unemulated_run(row, layer, x):
    """(y, upstream, gradients) of the layer's FP32 run; the same for every preset's layer
    (built from the same seed), so computed once per row."""
    if row not in _unemulated_runs:
        with unemulated():
            _unemulated_runs[row] = forward_backward(layer, x)[:3]
    return _unemulated_runs[row]


class KernelCalls:
    """Counts the accumulators' GEMM kernel calls (INT16 counters; BF16 and FP16-sum `_product`)."""

    def __init__(self):
        self.counts = {"BF16 GEMM": 0, "FP16-sum GEMM": 0}
        # (bf16_conv2d's implicit GEMMs: bf16_conv._conv and _filter_gradient.)
        self._patches = [mock.patch.object(module, name, self._counting(module, name, kernel))
                         for module, name, kernel in (
                             (bf16_gemm, "_product", "BF16 GEMM"),
                             (bf16_conv, "_conv", "BF16 GEMM"),
                             (bf16_conv, "_filter_gradient", "BF16 GEMM"),
                             (accumulation_gemm, "_product", "FP16-sum GEMM"))]

    def _counting(self, module, name, kernel):
        real = getattr(module, name)

        def counting(*args, **kwargs):
            self.counts[kernel] += 1
            return real(*args, **kwargs)

        return counting

    def __enter__(self):
        lp.dfp_gemm_counters(reset=True)
        for patch in self._patches:
            patch.__enter__()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self._patches):
            patch.__exit__(*exc)

    def read(self):
        return dict(self.counts, **{"INT16 GEMM": lp.dfp_gemm_counters()["calls"]})


def relative_error(a, b, scale=0.0):
    """max |a - b| relative to max |b| (or `scale`, if larger)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), scale, 1e-30)


KERNELS = ("INT16 GEMM", "BF16 GEMM", "FP16-sum GEMM")
CELLS = [(row, preset) for row in ROWS for preset in PRESETS]


@pytest.mark.parametrize("row,preset", CELLS, ids=[f"{r}-{p}" for r, p in CELLS])
def test_coverage_cell(row, preset):
    cell = TABLE[row][preset]
    layer, x = make_layer(row, preset)
    if cell == "reported":
        with unemulated():
            want = layer(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = tf.function(layer)(x)
        assert any(issubclass(w.category, lp.UnemulatedGemmWarning) for w in caught), row
        np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
        return
    assert cell in ("emulated",) + KERNELS, cell
    want_y, upstream, want_grads = unemulated_run(row, layer, x)
    with KernelCalls() as calls:
        y, _, grads, forward = forward_backward(layer, x, upstream, calls.read)
        total = calls.read()
    tolerance = TOLERANCE[preset]
    pairs = [("output", y, want_y)] + [
        (f"gradient {i}", g, w) for i, (g, w) in enumerate(zip(grads, want_grads))
        if g is not None or w is not None]
    # Gradients that are ~0 in FP32 (an attention key's bias) are compared on the scale of
    # the largest gradient.
    scale = max(np.abs(np.asarray(w)).max() for _, _, w in pairs[1:])
    for index, (name, got, want) in enumerate(pairs):
        assert relative_error(got, want, scale if index else 0.0) < tolerance, name
    changed = [not np.array_equal(np.asarray(got), np.asarray(want)) for _, got, want in pairs]
    # The output, the input's gradient and some weight's gradient (biases are added after
    # the GEMM: theirs is the unrounded error) differ from the FP32 run's.
    assert changed[0] and changed[1] and (len(changed) == 2 or any(changed[2:])), changed
    for kernel in KERNELS:
        if cell == kernel:
            assert forward[kernel] > 0, f"forward pass not on the {kernel}"
            assert total[kernel] > forward[kernel], f"backward pass not on the {kernel}"
        else:
            assert total[kernel] == 0, f"the {kernel} ran in a cell that says {cell!r}"


# Einsum / tensordot / matmul on the INT16 GEMM: bit for bit the written-out reference ------

def _dfp_reference(a, b):
    (aq, ea), (bq, eb) = (lp.quantize_dfp(v, return_exponents=True) for v in (a, b))
    exponent = lambda e: np.full((1, 1, 1), np.asarray(e).reshape(-1)[0])  # noqa: E731
    return reference_gemm.dfp_matmul_quantized(np.asarray(aq), exponent(ea), np.asarray(bq),
                                               exponent(eb))


@pytest.mark.parametrize("fn, weight_shape, reference", [
    # EinsumDense's projection: rows (a, b), columns (d, e), K = c.
    (lambda x, w: ops.einsum("abc,cde->abde", x, w), (4, 2, 3),
     lambda x, w: _dfp_reference(x.reshape(6, 4), w.reshape(4, 6)).reshape(2, 3, 2, 3)),
    # tensordot over two axes: K = axes (1, 2) of x against (0, 1) of w.
    (lambda x, w: ops.tensordot(x, w, axes=2), (3, 4, 2),
     lambda x, w: _dfp_reference(x.reshape(2, 12), w.reshape(12, 2))),
    # batched matmul with a transposed operand (attention's Q K^T): batch a, K = c.
    (lambda x, w: ops.einsum("abc,adc->abd", x, x), (1,),
     lambda x, w: _dfp_reference(x, np.swapaxes(x, 1, 2).copy())),
])
def test_einsum_and_tensordot_on_the_int16_gemm_equal_the_reference(fn, weight_shape, reference):
    """Forward bit-exact; the operands are those the policy rounded (DFP16, one exponent)."""
    keras.utils.set_random_seed(3)
    layer = OpLayer(fn, weight_shape, dtype=lp.Policy("dfp16"))
    x = np.random.default_rng(4).normal(size=(2, 3, 4)).astype(np.float32)
    layer.build(x.shape)
    lp.dfp_gemm_counters(reset=True)
    y = layer(x)
    assert lp.dfp_gemm_counters()["calls"] == 1
    np.testing.assert_array_equal(np.asarray(y), reference(x, np.asarray(layer.w)))


# Raw TensorFlow GEMMs: reported when traced ---------------------------------------------------

class Experts(L.Layer):
    """Mixture-of-experts style: the experts' GEMM in raw tf.einsum, a Dense router."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.router = L.Dense(2, name="router")

    def build(self, input_shape):
        self.w = self.add_weight(shape=(2, input_shape[-1], 3))

    def call(self, x):
        gates = keras.ops.softmax(self.router(x))  # emulated: not reported
        experts = tf.einsum("bi,eij->bej", x, self.w)  # raw: reported
        return keras.ops.einsum("be,bej->bj", gates, experts)  # emulated


def _experts_model(preset):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy(preset))
    try:
        inputs = keras.Input((4,))
        model = keras.Model(inputs, L.Dense(1)(Experts(name="experts")(inputs)))
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def test_raw_einsum_under_fp8_is_reported_once_and_logged_by_the_monitor():
    model = _experts_model("fp8")
    x, y = np.ones((4, 4), np.float32), np.zeros((4, 1), np.float32)
    monitor = lp.callbacks.PrecisionMonitor(every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[monitor])
    reports = [str(w.message) for w in caught if w.category is lp.UnemulatedGemmWarning]
    # Two traced train steps (the monitor's plain and sampling ones), one report.
    assert len(reports) == 1, reports
    assert "'experts' (Experts) computes Einsum" in reports[0] and "keras.ops" in reports[0]
    assert lp.unemulated_gemms(model) == {"experts": ["Einsum"]}
    assert history.history["unemulated_gemms"] == [1.0, 1.0]
    assert monitor.unemulated == {"experts": ["Einsum"]}


def test_strict_mode_stops_fit_and_ignore_skips_the_check():
    x, y = np.ones((2, 4), np.float32), np.zeros((2, 1), np.float32)
    try:
        lp.set_unemulated_gemm_action("error")
        with pytest.raises(lp.UnemulatedGemmError, match="'experts' .* Einsum"):
            _experts_model("fp8").fit(x, y, verbose=0)
        lp.set_unemulated_gemm_action("ignore")
        model = _experts_model("fp8")
        with warnings.catch_warnings():
            warnings.simplefilter("error", lp.UnemulatedGemmWarning)
            model.fit(x, y, verbose=0)
        assert lp.unemulated_gemms(model) == {}
    finally:
        lp.set_unemulated_gemm_action("warn")
    with pytest.raises(ValueError, match="action must be one of 'warn', 'error', 'ignore'"):
        lp.set_unemulated_gemm_action("strict")


def test_layers_without_an_emulating_policy_are_not_reported():
    model = _experts_model("fp32")  # an lp.Policy that rounds nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error", lp.UnemulatedGemmWarning)
        model.predict(np.ones((2, 4), np.float32), verbose=0)
    assert lp.unemulated_gemms(model) == {}


# Every stock layer that multiplies, alone in a model (issue 16): its dfp16 train step runs
# the INT16 GEMM, and no FP32 GEMM op is left in the step's graph.
TRAIN_STEP_LAYERS = {
    "Dense": (lambda: L.Dense(3), (4,)),
    "EinsumDense": (lambda: L.EinsumDense("abc,cd->abd", output_shape=(3, 3)), (3, 4)),
    "MultiHeadAttention": (lambda: attention(L.MultiHeadAttention(2, 2)), (3, 4)),
    "Conv1D": (lambda: L.Conv1D(3, 3), (6, 2)),
    "Conv2D": (lambda: L.Conv2D(3, 3), (5, 5, 2)),
    "Conv3D": (lambda: L.Conv3D(2, 2), (3, 3, 3, 2)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3), (5, 5, 2)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(3, 3), (5, 5, 2)),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(2, 3, strides=2), (4, 2)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(2, 3), (3, 3, 2)),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(2, 2), (2, 2, 2, 2)),
    "SimpleRNN": (lambda: L.SimpleRNN(3), (2, 2)),
    "LSTM": (lambda: L.LSTM(3), (2, 2)),
    "GRU": (lambda: L.GRU(3), (2, 2)),
    "ConvLSTM3D": (lambda: L.ConvLSTM3D(2, 2), (1, 2, 2, 2, 2)),
}
# TensorFlow's FP32 GEMM and convolution ops, forward and backward.
FP32_GEMM_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
                 "Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "Conv3D",
                 "Conv3DBackpropInputV2", "Conv3DBackpropFilterV2", "DepthwiseConv2dNative",
                 "DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter"}


def _graph_op_types(concrete):
    """Op types of a traced function, its nested functions (loop bodies, gradients) included."""
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


# (Depthwise convolutions run on the direct INT16 depthwise kernels, which
# count as the GEMMs they replace.)
INT16_GEMM_OPS = {"LowprecDfpMatmulFused", "LowprecDfpMatmul", "LowprecDfpConv2d",
                  "LowprecDfpConv2dBackpropFilter", "LowprecDfpConv3d",
                  "LowprecDfpConv3dBackpropFilter", "LowprecDfpDepthwiseConv2d",
                  "LowprecDfpDepthwiseConv2dBackpropFilter"}


@pytest.mark.parametrize("name", list(TRAIN_STEP_LAYERS))
def test_dfp16_train_step_of_a_one_layer_model_runs_the_int16_gemm(name):
    make, shape = TRAIN_STEP_LAYERS[name]
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy("dfp16"))
    try:
        inputs = keras.Input(shape)
        model = keras.Model(inputs, L.Flatten(dtype="float32")(make()(inputs)))
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    target = np.zeros((2,) + model.output_shape[1:], np.float32)
    lp.dfp_gemm_counters(reset=True)
    model.train_on_batch(x, target)
    assert lp.dfp_gemm_counters()["calls"] > 0, name

    @tf.function
    def step(x, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - target) ** 2)
        return tape.gradient(loss, model.trainable_weights)

    types = _graph_op_types(step.get_concrete_function(tf.constant(x), tf.constant(target)))
    # The INT16 GEMM: dfp_matmul's ops, or the implicit-GEMM convolution's.
    assert types & INT16_GEMM_OPS, sorted(types)
    assert not types & FP32_GEMM_OPS, (name, sorted(types & FP32_GEMM_OPS))


@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,kj", [(2, 3), (4, 3)]),  # implicit output: 'ik'
    ("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,jk->...ik", [(2, 2, 3, 4), (4, 5)]),
    ("abcd,cde->abe", [(2, 3, 4, 5), (4, 5, 6)]),  # K of two axes
    ("i,i->", [(3,), (3,)]),
    ("i,j->ij", [(3,), (4,)]),  # K empty: an outer product
])
def test_two_operand_einsums_as_one_gemm(equation, shapes):
    from tf_lowprec.gemm import common as gemm_common

    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=s).astype(np.float32) for s in shapes)
    (ta, tb), to = gemm_common.parse_einsum(equation, [len(s) for s in shapes])
    calls = []

    def matmul(x, y):
        calls.append((x.shape, y.shape))
        return tf.linalg.matmul(x, y)

    y = gemm_common.einsum_pair_as_matmul(matmul, ta, tb, to, tf.constant(a), tf.constant(b))
    assert len(calls) == 1
    np.testing.assert_allclose(np.asarray(y), np.einsum(equation, a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("equation", ["ii,ij->ij", "ij,jk->k", "bij,jk->bk"])
def test_einsums_that_are_not_one_gemm_are_left_to_the_fp32_op(equation):
    from tf_lowprec.gemm import common as gemm_common

    a, b = tf.ones([3, 3, 3][:len(equation.split(",")[0])]), tf.ones([3, 3])
    (ta, tb), to = gemm_common.parse_einsum(equation, [a.shape.rank, b.shape.rank])
    assert gemm_common.einsum_pair_as_matmul(tf.linalg.matmul, ta, tb, to, a, b) is None


def test_bad_einsum_and_tensordot_arguments():
    from tf_lowprec.gemm import common as gemm_common

    with pytest.raises(ValueError, match="names 2 operands; got 3"):
        gemm_common.parse_einsum("ij,jk->ik", [2, 2, 2])
    with pytest.raises(ValueError, match="subscripts must be letters"):
        gemm_common.parse_einsum("i1,jk->ik", [2, 2])
    with pytest.raises(ValueError, match="axes must be in 0..2"):
        gemm_common.tensordot_subscripts(2, 3, 3)
    with pytest.raises(ValueError, match="as many axes of a as of b"):
        gemm_common.tensordot_subscripts(2, 3, [[0, 1], [0]])
