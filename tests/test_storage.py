"""Storage-precision emulation: every layer output rounded (Policy(storage=...))."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp


def _q(x, fmt, rounding="nearest_even", seed=None):
    return lp.round_to_format(x, fmt, rounding, seed=seed)


def _data(shape, seed=0, scale=1.0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale)


def test_outputs_rounded_exactly_as_the_reference_says():
    keras.utils.set_random_seed(0)
    policy = lp.Policy("bf16", storage="fp16")
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, dtype=policy, name="d1")(inputs)
    a = keras.layers.ReLU(dtype=policy, name="relu")(h)
    s = keras.layers.Add(dtype=policy, name="add")([a, keras.layers.Dense(5, dtype=policy,
                                                                           name="skip")(inputs)])
    out = keras.layers.Dense(3, dtype=policy, name="d2")(s)
    model = keras.Model(inputs, out)
    x = _data((4, 6), scale=1e-3)
    d1, skip, d2 = (model.get_layer(n) for n in ("d1", "skip", "d2"))

    def dense(layer, v):
        return _q(tf.matmul(_q(v, "bf16"), _q(layer.kernel, "bf16")) + layer.bias, "fp16")

    h_ref = dense(d1, x)
    a_ref = _q(tf.nn.relu(h_ref), "fp16")
    s_ref = _q(a_ref + dense(skip, x), "fp16")
    expected = dense(d2, s_ref)
    np.testing.assert_array_equal(model(x).numpy(), expected.numpy())
    # Without storage rounding the result differs (the option does something).
    plain = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": lp.Policy("bf16")}))
    plain.set_weights(model.get_weights())
    assert not np.array_equal(plain(x).numpy(), expected.numpy())


def test_storage_gradient_is_straight_through_and_fit_trains():
    keras.utils.set_random_seed(1)
    policy = lp.Policy("fp32", storage="bf16")
    layer = keras.layers.Dense(2, dtype=policy)
    x = _data((3, 4))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * 3.0)
    np.testing.assert_array_equal(y.numpy(), _q(tf.matmul(x, layer.kernel) + layer.bias,
                                                "bf16").numpy())
    grad = tape.gradient(loss, layer.kernel)
    np.testing.assert_allclose(grad.numpy(), tf.matmul(x, tf.fill([3, 2], 3.0),
                                                       transpose_a=True).numpy(), rtol=1e-6)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu",
                                                                    dtype=policy),
                              keras.layers.Dense(1, dtype=policy)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    xs = _data((64, 4), seed=2).numpy()
    history = model.fit(xs, xs[:, :1], epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_stochastic_storage_reproducible_and_monitored():
    policy = lp.Policy("fp32", storage=("e5m2", "stochastic"))
    x = _data((16, 8))
    outs = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        layer = keras.layers.Dense(8, dtype=policy, name="same_name")  # seeds follow the name
        outs.append(layer(x).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], lp.round_to_format(outs[0], lp.E5M2).numpy())
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, dtype=policy)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, tf.zeros((16, 4)), epochs=1, verbose=0,
                        callbacks=[lp.callbacks.PrecisionMonitor(every_n_steps=1)])
    assert any(k.endswith("/storage/underflow") for k in history.history), list(history.history)


def test_storage_serializes_and_bad_values_fail():
    policy = lp.Policy("fp8", storage="bf16")
    restored = lp.Policy.from_config(policy.get_config())
    assert restored == policy and restored.spec.storage == ("bf16", "nearest_even")
    with pytest.raises(ValueError, match="storage"):
        lp.Policy("bf16", storage="nope")
    spec = lp.PrecisionSpec(activations="bf16", storage=("fp16", "stochastic"))
    assert lp.PrecisionSpec.from_config(spec.get_config()) == spec


def test_lstm_with_stochastic_rounding_trains_in_graph_mode_reproducibly():
    # The recurrent weights are rounded once before the while loop; their
    # stochastic-rounding seed must come from the outer graph's step.
    x = np.random.default_rng(0).normal(size=(16, 5, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(16, 2)).astype(np.float32)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(2)
        model = keras.Sequential([keras.Input((5, 3)),
                                  keras.layers.LSTM(4, dtype=lp.Policy("bf16", rounding="stochastic"),
                                                    name="lstm"),
                                  keras.layers.Dense(2, name="out")],
                                 name="same_model")  # seeds follow the layer path
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        weights.append([w.numpy() for w in model.weights])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
