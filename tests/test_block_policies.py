"""Block-scaled formats in policies: blocks along each GEMM's reduction axis, presets, monitor.

The emulated layers are checked bit for bit against GEMMs written out on
operands quantized by the NumPy reference (`reference.quantize_block_scaled`)
along the axes docs/block_formats.md gives: K for both forward operands, the
output channels for the error.
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.numerics import reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_policies  # noqa: E402  (the policy benchmark's MLP, CNN and LSTM)

BLOCK_PRESETS = ("mxfp8", "mxfp6", "mxfp4", "nvfp4")


def quantize(x, fmt, axis):
    return reference.quantize_block_scaled(np.asarray(x, np.float32), fmt.replace(axis=axis))[0]


def test_dense_blocks_each_operand_along_its_reduction_axis():
    spec = lp.PrecisionSpec(activations="mxfp6_e2m3", weights="mxfp8_e4m3", errors="mxfp6_e3m2")
    layer = keras.layers.Dense(40, use_bias=False, dtype=lp.Policy("blocks", spec=spec))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 70)).astype(np.float32)
    layer.build((6, 70))
    layer.kernel.assign(rng.standard_normal((70, 40)).astype(np.float32))
    upstream = rng.standard_normal((6, 40)).astype(np.float32) * 1e-3
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
    dx, dw = tape.gradient(y, [xt, layer.kernel], output_gradients=tf.constant(upstream))

    w = layer.kernel.numpy()
    # Forward: K is x's last axis and the kernel's first.
    np.testing.assert_array_equal(
        y.numpy(), tf.matmul(quantize(x, lp.MXFP6_E2M3, -1), quantize(w, lp.MXFP8_E4M3, 0)).numpy())
    # dX = dY W^T sums over the N outputs: dY and W both blocked along N.
    np.testing.assert_array_equal(dx.numpy(), tf.matmul(
        quantize(upstream, lp.MXFP6_E3M2, -1), quantize(w, lp.MXFP8_E4M3, -1),
        transpose_b=True).numpy())
    # dW = X^T dY sums over the M rows: X and dY both blocked along M.
    np.testing.assert_array_equal(dw.numpy(), tf.matmul(
        quantize(x, lp.MXFP6_E2M3, 0), quantize(upstream, lp.MXFP6_E3M2, 0),
        transpose_a=True).numpy())


def test_stochastic_block_errors_are_reproducible_and_weight_gradient_formats_apply():
    spec = lp.PrecisionSpec(activations="mxfp8_e4m3", weights="mxfp8_e4m3",
                            errors=("mxfp8_e5m2", "stochastic"), weight_gradients="bf16")
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((8, 64)).astype(np.float32))

    def gradients():
        keras.utils.set_random_seed(7)
        layer = keras.layers.Dense(32, dtype=lp.Policy("sr", spec=spec), name="d")
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, layer.kernel)

    first, second = gradients(), gradients()
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(first.numpy(), reference.round_to_format(first.numpy(), lp.BF16))


def test_conv_einsum_and_attention_block_along_their_contracted_axes():
    keras.config.set_dtype_policy(lp.Policy("mxfp8"))
    try:
        conv = keras.layers.Conv2D(5, 3, use_bias=False)
        einsum = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6))
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 6, 6, 40)).astype(np.float32)
    y = conv(images).numpy()
    kernel = conv.kernel.numpy()  # [3, 3, in, out]: blocks along "in"
    expected = tf.nn.conv2d(quantize(images, lp.MXFP8_E4M3, -1),
                            quantize(kernel, lp.MXFP8_E4M3, 2), 1, "VALID").numpy()
    np.testing.assert_array_equal(y, expected)

    sequence = rng.standard_normal((2, 3, 50)).astype(np.float32)
    y = einsum(sequence).numpy()
    expected = tf.einsum("abc,cd->abd", quantize(sequence, lp.MXFP8_E4M3, -1),
                         quantize(einsum.kernel.numpy(), lp.MXFP8_E4M3, 0)).numpy()
    np.testing.assert_array_equal(y, expected)

    # Einsums in general (the attention core's QK^T contracts the head size H,
    # PV the key positions S): each operand's last contracted axis.
    from tf_lowprec.keras import emulation

    assert emulation._reduction_axes("BTNH,BSNH->BNTS", [4, 4]) == (-1, -1)
    assert emulation._reduction_axes("BNTS,BSNH->BTNH", [4, 4]) == (-1, -3)
    assert emulation._reduction_axes("abc,cd->abd", [3, 2]) == (-1, -2)
    assert emulation._reduction_axes("ab,cd->abcd", [2, 2]) == (-1, -1)  # no contraction


@pytest.mark.parametrize("preset", BLOCK_PRESETS)
@pytest.mark.parametrize("model_name", ["MLP", "CNN", "LSTM"])
def test_presets_train_the_policy_benchmark_models(preset, model_name):
    model, shape, _ = bench_policies._build(bench_policies.MODELS[model_name],
                                            lp.Policy(preset))
    rng = np.random.default_rng(2)
    x = rng.random((8,) + shape).astype(np.float32)
    y = rng.integers(0, 10, 8)
    losses = [model.train_on_batch(x, y) for _ in range(2)]
    assert np.isfinite(losses).all(), losses


def test_nvfp4_keeps_first_and_last_layers_in_bf16_and_the_monitor_reports_blocks():
    keras.utils.set_random_seed(3)
    keras.config.set_dtype_policy(lp.Policy("nvfp4"))
    try:
        model = keras.Sequential([keras.Input((48,)), keras.layers.Dense(32, name="first"),
                                  keras.layers.Dense(32, name="middle"),
                                  keras.layers.Dense(4, name="last")], name="net")
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile("sgd", "mse")
    monitor = lp.callbacks.PrecisionMonitor(every_n_steps=1)
    x = np.random.default_rng(3).standard_normal((16, 48)).astype(np.float32)
    x[:, 0] *= 1e3  # one large input channel: clipped blocks and a wide scale spread
    history = model.fit(x, np.zeros((16, 4)), epochs=1, verbose=0, callbacks=[monitor])
    logs = {k: v[-1] for k, v in history.history.items()}
    for role in ("activations", "weights", "errors"):
        for stat in ("clipped_blocks", "scale_exponent_min", "scale_exponent_max"):
            assert f"precision/net/middle/{role}/{stat}" in logs
        assert f"precision/net/first/{role}/underflow" in logs
        assert f"precision/net/first/{role}/clipped_blocks" not in logs  # BF16 there
    assert (logs["precision/net/middle/activations/scale_exponent_max"]
            >= logs["precision/net/middle/activations/scale_exponent_min"])


def test_block_policies_save_and_load(tmp_path):
    spec = lp.PrecisionSpec(activations=lp.MXFP8_E4M3.replace(block_size=16),
                            weights="nvfp4", errors=("mxfp8_e5m2", "stochastic"))
    model = keras.Sequential([keras.Input((20,)),
                              keras.layers.Dense(3, dtype=lp.Policy("custom_mx", spec=spec)),
                              keras.layers.Dense(2, dtype=lp.Policy("mxfp4"))])
    x = np.random.default_rng(4).standard_normal((4, 20)).astype(np.float32)
    path = str(tmp_path / "mx.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].dtype_policy.spec == spec
    assert loaded.layers[1].dtype_policy.spec == lp.Policy("mxfp4").spec
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_random_hadamard_is_orthogonal_and_pads_the_summed_axis():
    from tf_lowprec.keras import emulation

    rng = np.random.default_rng(6)
    x = tf.constant(rng.standard_normal((37, 5)).astype(np.float32))
    dy = tf.constant(rng.standard_normal((37, 3)).astype(np.float32))
    seed = tf.constant([1, 2], tf.int64)
    tx = emulation.random_hadamard(x, 0, 16, seed)
    tdy = emulation.random_hadamard(dy, 0, 16, seed)
    assert tx.shape == (48, 5) and tdy.shape == (48, 3)  # 37 rows padded to 3 tiles of 16
    np.testing.assert_allclose(tf.matmul(tx, tdy, transpose_a=True).numpy(),
                               tf.matmul(x, dy, transpose_a=True).numpy(), rtol=1e-5, atol=1e-5)
    # An outlier is spread over its tile: the transform is what makes FP4 blocks usable.
    spike = tf.constant(np.eye(16, 1, -3, dtype=np.float32) * 16.0)
    assert np.allclose(np.abs(emulation.random_hadamard(spike, 0, 16, seed).numpy()), 4.0)


def test_nvfp4_weight_gradient_gemm_takes_the_hadamard_transform():
    hadamard = lp.PrecisionSpec(activations="nvfp4", weights="nvfp4", errors="nvfp4",
                                wgrad_hadamard=16)
    plain = lp.PrecisionSpec(activations="nvfp4", weights="nvfp4", errors="nvfp4")
    assert lp.Policy("nvfp4").spec.wgrad_hadamard == 16
    assert lp.PrecisionSpec.from_config(hadamard.get_config()) == hadamard != plain
    with pytest.raises(ValueError, match="wgrad_hadamard must be None or a power of two"):
        lp.PrecisionSpec(activations="nvfp4", wgrad_hadamard=12)
    rng = np.random.default_rng(7)
    x = tf.constant(rng.standard_normal((64, 48)).astype(np.float32))
    x = tf.tensor_scatter_nd_update(x, [[5, 0]], [300.0])  # an outlier row
    results = {}
    for name, spec in (("hadamard", hadamard), ("plain", plain)):
        keras.utils.set_random_seed(8)
        layer = keras.layers.Dense(24, use_bias=False, dtype=lp.Policy(name, spec=spec),
                                   name="d")
        with tf.GradientTape() as tape:
            y = layer(x)
        results[name] = (y.numpy(), tape.gradient(y, layer.kernel).numpy())
        keras.utils.set_random_seed(8)
        exact = keras.layers.Dense(24, use_bias=False, name="d")
        with tf.GradientTape() as tape:
            y_exact = exact(x)
        results["fp32"] = tape.gradient(y_exact, exact.kernel).numpy()
    # The forward GEMM and dX are untouched; dW differs, and stays close to FP32's.
    np.testing.assert_array_equal(results["hadamard"][0], results["plain"][0])
    assert not np.array_equal(results["hadamard"][1], results["plain"][1])
    error = np.linalg.norm(results["hadamard"][1] - results["fp32"]) / np.linalg.norm(
        results["fp32"])
    assert error < 0.5, error


def test_square_weight_blocks_give_one_quantized_weight_for_both_gemms():
    spec = lp.PrecisionSpec(activations="nvfp4", weights="nvfp4", errors="nvfp4",
                            square_weight_blocks=True)
    assert lp.Policy("nvfp4").spec.square_weight_blocks
    assert lp.PrecisionSpec.from_config(spec.get_config()) == spec
    with pytest.raises(ValueError, match="square_weight_blocks must be True or False"):
        lp.PrecisionSpec(weights="nvfp4", square_weight_blocks=1)
    layer = keras.layers.Dense(20, use_bias=False, dtype=lp.Policy("tiles", spec=spec))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    layer.build((6, 40))
    w = rng.standard_normal((40, 20)).astype(np.float32)
    w[3, 7] = 50.0  # an outlier: its 16 x 16 tile gets a large scale, the others do not
    layer.kernel.assign(w)
    upstream = rng.standard_normal((6, 20)).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
    dx = tape.gradient(y, xt, output_gradients=tf.constant(upstream))
    # The written-out tiles: 40 x 20 padded to 48 x 32, each 16 x 16 tile one NVFP4 block.
    padded = np.zeros((48, 32), np.float32)
    padded[:40, :20] = w
    tiles = padded.reshape(3, 16, 2, 16).transpose(0, 2, 1, 3).reshape(3, 2, 256)
    wq = (reference.quantize_block_scaled(tiles, lp.NVFP4.replace(block_size=256))[0]
          .reshape(3, 2, 16, 16).transpose(0, 2, 1, 3).reshape(48, 32)[:40, :20])
    xq = quantize(x, lp.NVFP4, -1)
    np.testing.assert_array_equal(y.numpy(), tf.matmul(xq, wq).numpy())
    # dX reads the same quantized weight (not one re-quantized along N).  Its FP32 sums
    # may be ordered differently from tf.matmul's with transpose_b (oneDNN picks kernels
    # by CPU and layout: seen on AVX-512), so equal within FP32 rounding of the sums --
    # far below what a weight re-quantized in 1 x 16 blocks along N changes.
    upstream_q = quantize(upstream, lp.NVFP4, -1)
    expected = tf.matmul(upstream_q, wq, transpose_b=True).numpy()
    tolerance = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(dx.numpy(), expected, rtol=0, atol=tolerance)
    requantized = tf.matmul(upstream_q, quantize(w, lp.NVFP4, 1), transpose_b=True).numpy()
    assert np.abs(requantized - expected).max() > 100 * tolerance
