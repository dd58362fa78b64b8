"""The "bf16_native" preset: BF16 GEMMs in the VDPBF16PS order, the same bits everywhere.

Its GEMMs run `bf16_matmul` / `bf16_conv2d` (forward and both backward
GEMMs), so a model gets identical outputs and gradients from the default
kernel of the CPU (VDPBF16PS with AVX512_BF16, else the AVX2 FMA kernel), the
portable emulation and the stock-TF twin (XLA, export).  Layer-by-layer
equality with the explicit reference is in test_policy_layers.py; this file
checks the routing and the whole-model identity.  Runtime ~15 s.
"""

import dataclasses
import functools
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import bf16 as bf16_gemm
from tf_lowprec.gemm import registry as gemm_registry
from tf_lowprec.keras import emulation
from policy_reference import assert_bitwise_equal


def _model(policy):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", dtype=policy)(inputs)
    x = keras.layers.Reshape((6, 24))(x)
    x = keras.layers.LSTM(5, return_sequences=True, dtype=policy)(x)
    x = keras.layers.Dense(3, dtype=policy)(x)  # a Dense on a sequence: [2, 6, 5] @ [5, 3]
    return keras.Model(inputs, x)


def _outputs_and_gradients(model, x):
    with tf.GradientTape() as tape:
        y = model(x)
        loss = tf.reduce_sum(y * y)
    return [y] + tape.gradient(loss, model.trainable_weights)


def _isa_gemm(isa):
    """accumulator_gemm with bf16_gemm's functions pinned to one instruction set."""
    original = emulation.accumulator_gemm

    def pinned(accumulator, name):
        gemm = original(accumulator, name)
        if accumulator == "bf16_dot" and gemm is not None:
            return functools.partial(gemm, isa=isa)
        return gemm

    return mock.patch.object(emulation, "accumulator_gemm", pinned)


def test_gemms_run_on_bf16_matmul():
    calls = []
    real = bf16_gemm.bf16_matmul

    def counting(*args, **kwargs):
        calls.append(kwargs.get("implementation"))
        return real(*args, **kwargs)

    model = _model(lp.Policy("bf16_native"))
    x = np.random.RandomState(0).randn(2, 6, 6, 2).astype("float32")
    # The registry's entry is what the emulation runs; bf16_conv2d calls the module's function.
    entry = dataclasses.replace(gemm_registry.get("bf16_dot"), matmul=counting)
    with mock.patch.object(bf16_gemm, "bf16_matmul", counting), mock.patch.dict(
            gemm_registry.ACCUMULATORS, {"bf16_dot": entry}):
        _outputs_and_gradients(model, x)
    # Conv2D (im2col), the LSTM's input and recurrent GEMMs, the Dense: all of them.
    assert len(calls) >= 4
    # The bf16 preset (FP32 GEMM) gives other bits somewhere: the order matters.
    fp32_order = _outputs_and_gradients(_model(lp.Policy("bf16")), x)
    native = _outputs_and_gradients(model, x)
    assert any(not np.array_equal(a.numpy().view(np.uint32), b.numpy().view(np.uint32))
               for a, b in zip(native, fp32_order))
    assert all(np.allclose(a, b, rtol=1e-2, atol=1e-3) for a, b in zip(native, fp32_order))


def test_same_bits_native_emulated_and_stock_tf():
    x = np.random.RandomState(1).randn(2, 6, 6, 2).astype("float32")
    native = _outputs_and_gradients(_model(lp.Policy("bf16_native")), x)
    with _isa_gemm("portable"):
        emulated = _outputs_and_gradients(_model(lp.Policy("bf16_native")), x)
    stock_tf = _outputs_and_gradients(
        _model(lp.Policy("bf16_native", implementation="tf")), x)
    for a, b, c in zip(native, emulated, stock_tf):
        assert_bitwise_equal(b, a, "portable emulation vs native kernel")
        assert_bitwise_equal(c, a, "stock-TF twin vs native kernel")
    if lp.kernel_tiers()["bf16_gemm"]["auto"] == "portable":
        pytest.skip("no AVX2 or AVX512_BF16 here: the default kernel was the portable one too")


def test_fit_is_reproducible():
    rng = np.random.RandomState(2)
    x = rng.randn(8, 6, 6, 2).astype("float32")
    y = rng.randn(8, 6, 3).astype("float32")
    weights = []
    for _ in range(2):
        model = _model(lp.Policy("bf16_native"))
        model.compile(keras.optimizers.SGD(0.01), "mse")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    for w_run, w_again in zip(*weights):
        assert_bitwise_equal(w_again, w_run, "two runs")


def test_jit_compile_runs_the_stock_tf_twin():
    """Under XLA the GEMMs are the twin's: the predictions keep the kernel's bits.

    (Only GEMMs, bias additions and ReLU here: XLA's own transcendental
    functions and reductions may differ from TensorFlow's kernels in the last
    bit, whatever the GEMM.)
    """
    keras.utils.set_random_seed(4)
    policy = lp.Policy("bf16_native")
    model = keras.Sequential([keras.Input((6, 6, 2)),
                              keras.layers.Conv2D(4, 3, activation="relu", dtype=policy),
                              keras.layers.Flatten(),
                              keras.layers.Dense(3, dtype=policy)])
    x = np.random.RandomState(5).randn(4, 6, 6, 2).astype("float32")
    kernel = model.predict(x, verbose=0)
    model.compile(jit_compile=True)
    assert_bitwise_equal(model.predict(x, verbose=0), kernel, "jit_compile vs kernel")
